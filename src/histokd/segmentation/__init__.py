"""Weakly supervised segmentation helpers: pseudo-masks from tile scores, losses, region sampling.

Used by the IFKD method (``histokd.methods.ifkd``); nothing here reads a workspace or trains a loop.
"""

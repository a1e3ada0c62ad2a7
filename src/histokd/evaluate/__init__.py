"""Evaluation: bag / instance / pixel metrics, bootstrap CIs, cross-validation protocols, benchmarks."""

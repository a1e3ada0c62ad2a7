"""Whole-slide images: reading (``reader``), tissue detection (``tissue``), masks (``masks``), tiling (``tiling``)."""

from __future__ import annotations

from histokd.slides.reader import Slide, open_slide

__all__ = ["Slide", "open_slide"]

"""Fixtures of the predict tests: one small model bundle per session (``predict_slides.train_bundle``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from predict_slides import train_bundle


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``RUN/models/m``: ABMIL on handcrafted features of twelve tiny slides (tiles 32 px at 1 µm/px)."""
    return train_bundle(tmp_path_factory.mktemp("bundle"))

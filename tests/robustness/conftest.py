"""Fixtures of the bad-input suite (issue 16); the helpers are in ``badinput.py`` (test modules cannot
import conftest)."""

from __future__ import annotations

import pytest
from badinput import SlideFiles, make_slide_files


@pytest.fixture(scope="session")
def slide_files(tmp_path_factory: pytest.TempPathFactory) -> SlideFiles:
    return make_slide_files(tmp_path_factory.mktemp("robust_slides"))

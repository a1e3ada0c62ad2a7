"""Suite-wide settings: the documented cache folder (exported ONNX graphs) is a temporary one, so the tests
write nothing outside their own folders and export each encoder once per session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _histokd_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    if "HISTOKD_CACHE_DIR" not in os.environ:
        os.environ["HISTOKD_CACHE_DIR"] = str(tmp_path_factory.mktemp("histokd-cache"))

"""Fixtures of the viewer tests: a small workspace (viewer_ws.py) and the app behind a test client."""

from __future__ import annotations

import pytest
from viewer_ws import make_viewer_run

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def viewer_run(tmp_path_factory):
    return make_viewer_run(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def fake_assets(tmp_path_factory):
    """An OpenSeadragon folder stand-in for the API tests (the page script itself is not needed there)."""
    d = tmp_path_factory.mktemp("osd")
    (d / "openseadragon.min.js").write_text("/* stand-in */\n")
    return d


@pytest.fixture(scope="module")
def catalog(viewer_run):
    from histokd.viewer.catalog import Catalog

    return Catalog(viewer_run.root)


@pytest.fixture(scope="module")
def client(catalog, fake_assets):
    from starlette.testclient import TestClient

    from histokd.viewer.app import create_app

    with TestClient(create_app(catalog, TOKEN, fake_assets), raise_server_exceptions=True) as c:
        yield c

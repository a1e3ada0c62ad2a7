"""``histokd view`` on the command line: a real server (address with token, 403 without, 200 with), one-line
errors for bad input, and the static export."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from histokd.cli import app
from histokd.viewer.assets import find_assets

needs_assets = pytest.mark.skipif(find_assets() is None, reason="OpenSeadragon not fetched (needs npm): run "
                                  "`make viewer-assets`")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@needs_assets
def test_server_prints_its_address_and_requires_the_token(viewer_run):
    env = {**os.environ, "HISTOKD_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "histokd", "view", "-w", str(viewer_run.root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"open (http://127\.0\.0\.1:(\d+)/([A-Za-z0-9_-]{32})/)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        url, port, token = m.group(1), m.group(2), m.group(3)
        assert _status(url) == 200
        assert _status(url + "api/workspace.json") == 200
        assert _status(f"http://127.0.0.1:{port}/") == 403
        assert _status(f"http://127.0.0.1:{port}/{token[:-1]}x/api/workspace.json") == 403
        assert _status(url + "dzi/nosuch.dzi") == 404
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_two_runs_get_different_tokens():
    from histokd.viewer.app import new_token

    assert len({new_token() for _ in range(20)}) == 20


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output


def test_missing_workspace_is_one_line(tmp_path):
    code, out = _run(["view", "-w", str(tmp_path / "nope")])
    assert code == 2 and out.count("\n") == 1 and "nope" in out and "Traceback" not in out


def test_unknown_model_is_one_line(viewer_run):
    code, out = _run(["view", "-w", str(viewer_run.root), "--model", "nosuch"])
    assert code == 2 and out.count("\n") == 1 and "predictions/nosuch" in out and "histokd label" in out


def test_hostile_model_id_is_one_line(viewer_run):
    code, out = _run(["view", "-w", str(viewer_run.root), "--model", "../../etc"])
    assert code == 2 and out.count("\n") == 1 and "model id" in out


def test_missing_assets_say_how_to_get_them(viewer_run, monkeypatch):
    from histokd.viewer import assets

    monkeypatch.setattr(assets, "find_assets", lambda: None)
    code, out = _run(["view", "-w", str(viewer_run.root)])
    assert code == 2 and out.count("\n") == 1 and "make viewer-assets" in out


def test_port_taken_is_one_line(viewer_run):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        code, out = _run(["view", "-w", str(viewer_run.root), "--port", str(s.getsockname()[1])])
    finally:
        s.close()
    if find_assets() is None:
        pytest.skip("OpenSeadragon not fetched: the assets check comes first")
    assert code == 2 and out.count("\n") == 1 and "--port" in out


@needs_assets
def test_static_export(viewer_run, tmp_path):
    out = tmp_path / "export"
    code, text = _run(["view", "-w", str(viewer_run.root), "--export", str(out), "--max-level", "9"])
    assert code == 1  # the slide whose file is missing is a failure, listed; the others are exported
    assert re.search(r"2 slides, \d+ slide tiles \+ \d+ overlay tiles, about [\d.]+ MB", text)
    assert "1 of 3 slides failed" in text and "bad:" in text
    doc = json.loads((out / "api" / "workspace.json").read_text())
    assert doc["static"] is True
    a = next(s for s in doc["slides"] if s["id"] == "a")
    assert a["dz"]["max_level"] == 9 and a["dz"]["base_scale"] == 4
    assert 'Width="376" Height="274"' in (out / "dzi" / "a.dzi").read_text()
    levels = sorted(int(p.name) for p in (out / "dzi" / "a_files").iterdir())
    assert levels == list(range(10))
    assert (out / "overlay" / "weno-t" / "p1" / "a_files" / "9" / "0_0.png").is_file()
    assert (out / "overlay" / "_" / "truth" / "a_files" / "9" / "1_1.png").is_file()
    assert (out / "api" / "tiles" / "a.json").is_file() and (out / "index.html").is_file()
    assert (out / "vendor" / "openseadragon" / "LICENSE.txt").is_file()
    assert not (out / "dzi" / "bad.dzi").exists()


def test_export_rejects_a_file_as_folder(viewer_run, tmp_path):
    if find_assets() is None:
        pytest.skip("OpenSeadragon not fetched: the assets check comes first")
    f = tmp_path / "file"
    f.write_text("x")
    code, out = _run(["view", "-w", str(viewer_run.root), "--export", str(f)])
    assert code == 2 and "not a folder" in out and out.count("\n") == 2  # the size estimate, then the error


def test_assets_extract_checks_the_checksum(tmp_path):
    from histokd.errors import InputError
    from histokd.viewer.assets import extract

    with pytest.raises(InputError, match="checksum"):
        extract(b"not the package", tmp_path / "osd")
    assert not (tmp_path / "osd").exists()


def test_served_page_has_no_inline_script(client):
    from conftest import TOKEN

    html = client.get(f"/{TOKEN}/").text
    assert re.findall(r"<script[^>]*>", html) == ['<script src="vendor/openseadragon/openseadragon.min.js">',
                                                 '<script src="static/viewer.js">']

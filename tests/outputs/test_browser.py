"""The report opens in headless Chromium (Debian's ``chromium``) without console or script errors."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _require_browser() -> None:
    """A missing browser fails the test (``make test`` installs Debian's chromium); there is no skip."""
    if CHROMIUM is None:
        pytest.fail("chromium not on PATH: `apt-get install -y chromium` (or `make browser`); "
                    "to leave this test out on purpose, deselect it: `pytest --deselect tests/outputs/test_browser.py`")

# Injected before the report's own content: records uncaught errors and failed images into the DOM,
# which --dump-dom then shows us.
_PROBE = """<script>
window.__errors = [];
window.onerror = function (msg, src, line) { window.__errors.push(String(msg) + '@' + line); };
window.addEventListener('error', function (e) { if (e.target && e.target.tagName === 'IMG') window.__errors.push('img'); }, true);
window.addEventListener('load', function () {
  var imgs = document.images, bad = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) bad++; }
  var d = document.createElement('div');
  d.id = 'probe';
  d.setAttribute('data-errors', window.__errors.join('|'));
  d.setAttribute('data-images', String(imgs.length));
  d.setAttribute('data-broken', String(bad));
  document.body.appendChild(d);
});
</script>"""


def _open(html_path, tmp_path) -> tuple[str, str]:
    probe = tmp_path / "probed.html"
    probe.write_text(html_path.read_text().replace("<head>", "<head>" + _PROBE, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout, res.stderr


def test_report_loads_in_chromium_without_errors(built_report, tmp_path):
    _require_browser()
    _, index = built_report
    dom, log = _open(index, tmp_path)
    m = re.search(r'<div id="probe" data-errors="([^"]*)" data-images="(\d+)" data-broken="(\d+)"', dom)
    assert m, "the page did not finish loading:\n" + dom[-1000:]
    errors, n_images, broken = m.group(1), int(m.group(2)), int(m.group(3))
    assert errors == ""
    assert n_images >= 3 + 4 + 18 and broken == 0
    console = [ln for ln in log.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    assert "histokd report: abmil-test" in dom


def test_malicious_label_shows_as_text_in_chromium(make_workspace, tmp_path):
    _require_browser()
    from histokd.pipeline.report import report

    evil = "<script>alert(1)</script>"
    run = make_workspace(tmp_path / "ws", classes=["normal", evil], tumour_label=evil)
    index = report(run.root, run.model_id, top_k=1, n_boot=0)
    dom, _ = _open(index, tmp_path)
    # the only <script> in the DOM is our probe; the label is text
    assert dom.lower().count("<script") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert 'data-errors=""' in dom

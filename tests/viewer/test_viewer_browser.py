"""The viewer in headless Chromium (Debian's ``chromium``, driven over its DevTools pipe): the page loads,
tiles arrive, the canvas is not blank, an overlay switches on, a click shows a tile's scores, the keyboard
moves to the next slide, markup in a label stays text, and nothing is logged as an error; the static export
works the same from a plain static web server."""

from __future__ import annotations

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from chromium_pipe import CHROMIUM, Chromium
from viewer_ws import EVIL

from histokd.viewer.assets import HOW_TO_GET, find_assets

pytestmark = pytest.mark.skipif(find_assets() is None, reason=f"OpenSeadragon is not fetched: {HOW_TO_GET}")

# fraction of canvas pixels that are not the page background, and how many distinct colours there are
CANVAS_STATS = """(() => {
  const c = document.querySelector('#viewer .openseadragon-canvas canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let fg = 0; const colours = new Set();
  for (let i = 0; i < d.length; i += 4 * 7) {
    if (d[i + 3] > 0 && (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240)) fg++;
    colours.add((d[i] >> 3) * 1024 + (d[i + 1] >> 3) * 32 + (d[i + 2] >> 3));
  }
  return [fg / (d.length / (4 * 7)), colours.size];
})()"""


def _require_browser() -> None:
    if CHROMIUM is None:
        pytest.fail("chromium not on PATH: `apt-get install -y chromium` (or `make browser`); to leave this test out "
                    "on purpose, deselect it: `pytest --deselect tests/viewer/test_viewer_browser.py`")


@pytest.fixture
def live_url(catalog):
    """The viewer app on uvicorn in a thread, at its tokened address."""
    import uvicorn

    from histokd.pipeline.view import bind
    from histokd.viewer.app import create_app, new_token

    token = new_token()
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(catalog, token, find_assets()), log_level="warning",
                                           lifespan="off"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/{token}/"
    server.should_exit = True
    th.join(10)
    sock.close()


@pytest.fixture
def browser(tmp_path):
    _require_browser()
    b = Chromium(tmp_path / "profile")
    yield b
    b.close()


def _open_and_wait(b: Chromium, url: str) -> float:
    t0 = time.monotonic()
    b.send("Page.navigate", {"url": url})
    b.wait_for("!!(window.histokdView && histokdView.loaded > 0)", 60)
    first = time.monotonic() - t0
    b.wait_for("!!(histokdView.tiles && document.querySelectorAll('#layers .layer').length > 0)", 60)
    _settle(b)
    return first


def _settle(b: Chromium, quiet: float = 0.8, timeout: float = 30) -> None:
    """Wait until no new tile has arrived for ``quiet`` seconds."""
    end, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < end:
        n = b.evaluate("histokdView.loaded")
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        time.sleep(0.1)


def test_viewer_in_chromium(browser, live_url, tmp_path):
    b = browser
    first = _open_and_wait(b, live_url)
    assert first < 30
    assert b.evaluate("document.getElementById('slide-title').textContent").startswith("a")
    fg, colours = b.evaluate(CANVAS_STATS)
    assert fg > 0.2 and colours > 20, (fg, colours)  # tissue, tumour and overlay colours, not a blank canvas

    # the label with markup is text: no element was made from it
    assert b.evaluate("document.querySelectorAll('img[onerror], #slide-table img').length") == 0
    assert EVIL in b.evaluate("document.getElementById('slide-table').innerText")

    # switch the evidence overlay on: more tiles arrive and the picture changes
    before = b.evaluate(CANVAS_STATS)
    n = b.evaluate("histokdView.loaded")
    b.evaluate("""(() => { const t = [...document.querySelectorAll('#layers .layer')]
        .find(d => d.textContent.includes('weno-t: raw evidence')); t.querySelector('input[type=checkbox]').click(); })()""")
    b.wait_for(f"histokdView.loaded > {n} && !!histokdView.layers['weno-t/evidence'].item", 30)
    _settle(b)
    assert b.evaluate(CANVAS_STATS) != before

    # click the middle of the slide: the tile's coordinates and every model's scores
    rect = b.evaluate("(() => { const r = document.getElementById('viewer').getBoundingClientRect(); "
                      "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    b.click(*rect)
    b.wait_for("document.getElementById('tile-info').innerText.includes('weno-t: P(tumour)')", 10)
    info = b.evaluate("document.getElementById('tile-info').innerText")
    assert "three: P(grade1)" in info and "weno-t: evidence" in info and "ground-truth tumour fraction" in info
    assert b.evaluate("document.querySelectorAll('#hotspots li').length") == 10
    # the thresholded overlay as QuPath GeoJSON: the tiles of the hot-spot layer at or above its threshold
    geo = b.evaluate("histokdView.thresholdedGeoJSON()")
    tiles = b.evaluate("histokdView.tiles.models[histokdView.model]")
    layer = b.evaluate("document.getElementById('hot-layer').value")
    k = int(layer.split("/")[1][1:])
    want = sum(1 for v in tiles["probs"][k] if v is not None and v >= 0.5)
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == want > 0
    assert geo["features"][0]["geometry"]["coordinates"][0][0] == geo["features"][0]["geometry"]["coordinates"][0][4]
    b.screenshot(tmp_path / "viewer.png")
    assert (tmp_path / "viewer.png").stat().st_size > 20_000
    # "save PNG": the page hands the current view to the browser as a PNG download named after the slide
    saved = b.evaluate("""(() => { const seen = []; const real = HTMLAnchorElement.prototype.click;
      HTMLAnchorElement.prototype.click = function () { seen.push([this.download, this.href]); };
      document.getElementById('save-png').click(); HTMLAnchorElement.prototype.click = real;
      return seen; })()""")
    assert len(saved) == 1 and saved[0][0] == "a.png" and saved[0][1].startswith("data:image/png;base64,")
    import base64
    import io

    import numpy as np
    from PIL import Image

    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(saved[0][1].split(",", 1)[1]))).convert("RGB"))
    assert png.shape[0] > 100 and png.shape[1] > 100 and len(np.unique(png.reshape(-1, 3), axis=0)) > 20

    # side by side: the teacher's evidence in a second viewer that follows the first
    b.evaluate("(() => { const s = document.getElementById('compare-select'); s.value = 'weno-t/evidence'; "
               "s.dispatchEvent(new Event('change')); })()")
    b.wait_for("histokdView.loaded2 > 0 && histokdView.viewer2.world.getItemCount() === 2", 30)
    b.evaluate("histokdView.viewer.viewport.zoomBy(2, undefined, true); "
               "histokdView.viewer.viewport.panBy(new OpenSeadragon.Point(0.1, 0.05), true); 1")
    b.wait_for("(() => { const a = histokdView.viewer.viewport, c = histokdView.viewer2.viewport; "
               "return Math.abs(a.getZoom() - c.getZoom()) < 1e-6 && a.getCenter().distanceTo(c.getCenter()) < 1e-6; })()",
               10)
    _settle(b)

    # next slide by keyboard
    b.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "n", "text": "n", "code": "KeyN",
                                      "windowsVirtualKeyCode": 78})
    b.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": "n", "code": "KeyN", "windowsVirtualKeyCode": 78})
    b.wait_for("document.getElementById('slide-title').textContent.startsWith('b')", 10)
    b.wait_for("!!(histokdView.tiles && histokdView.tilesFor === 'b')", 30)
    _settle(b)
    assert b.evaluate("histokdView.viewer2.world.getItemCount()") == 2  # the second viewer follows to slide b
    assert b.problems() == []


def test_static_export_in_chromium(browser, catalog, tmp_path):
    from histokd.viewer.export import plan_export, write_export

    out = tmp_path / "export"
    write_export(catalog, out, find_assets(), plan_export(catalog, 10), 10)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        _open_and_wait(browser, f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
        assert "static export" in browser.evaluate("document.getElementById('ws-name').textContent")
        fg, colours = browser.evaluate(CANVAS_STATS)
        assert fg > 0.2 and colours > 20, (fg, colours)
        assert browser.problems() == []
    finally:
        httpd.shutdown()
        httpd.server_close()



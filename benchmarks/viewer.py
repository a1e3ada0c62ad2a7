"""``histokd view`` speed: deep-zoom tile latency (slide and overlay, separately) and time to first image.

Builds a workspace from synthetic slides (``histokd synth`` + ``histokd tile``), writes two predictions
per slide without training anything (the viewer only reads them): ``grid`` on the real tile grid, and
``dense``, a 100,000-tile grid over the same slide (tiles of about 13 level-0 px on a 4096-px slide: the
overlay raster of a 100,000-tile slide, whatever its pixel size). Then it starts the real server
(uvicorn, on a free port) and requests a few hundred random deep-zoom tiles, each once (cold: no cache
hit), one at a time over one keep-alive connection: for each, the slide JPEG and the same tile of the
``grid`` and ``dense`` probability overlays (interleaved, so that other load on the machine hits them alike). Time to first image: a fresh server's catalogue, ``api/workspace.json``,
the ``.dzi`` and every tile of the level that fits a 1024-px viewport; and, where ``chromium`` is on PATH,
the page in headless Chromium from navigation to its first tile drawn.

    .venv/bin/python benchmarks/viewer.py                       # 2 synthetic 4096-px slides, 300 requests each
    .venv/bin/python benchmarks/viewer.py --requests 500 --size 8192
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _predictions(ws: Path, sid: str, coords: np.ndarray, size: float, model: str, rng: np.random.Generator) -> None:
    from histokd.predictions import write_prediction

    class P:  # what write_prediction reads
        pass

    p = P()
    prob = rng.random(len(coords)).astype(np.float32)
    p.instance_probs = np.column_stack([1 - prob, prob])
    p.instance_scores = rng.normal(0, 1, len(coords)).astype(np.float32)
    p.mask = None
    p.bag_probs = np.array([1 - prob.max(), prob.max()], np.float32)
    write_prediction(ws / "predictions" / model / f"{sid}.h5", p, coords,
                     {"classes": ["normal", "tumour"], "positive_class": "tumour", "model_id": model,
                      "method": "abmil", "patch_size_level0": float(size), "slide_id": sid})


def build(work: Path, slides: int, size: int, dense: int) -> Path:
    from histokd.pipeline.tile import tile
    from histokd.slides.tiling import read_tiles
    from histokd.synth.generate import synth

    t = time.perf_counter()
    csv = synth(work / "cohort", slides=slides, seed=0, preset="camelyon", size=size, workers=2, show_progress=False)
    ws = work / "run"
    tile(csv, ws, mpp=0.5, size=224, workers=2, show_progress=False)
    rng = np.random.default_rng(0)
    for h5 in sorted((ws / "tiles").glob("*.h5")):
        g = read_tiles(h5)
        sid = h5.stem
        _predictions(ws, sid, g.coords, float(g.attrs["patch_size_level0"]), "grid", rng)
        w, h = (int(v) for v in g.attrs["slide_dimensions"])
        side = math.sqrt(w * h / dense)
        xs, ys = np.arange(0, w - side + 1, side), np.arange(0, h - side + 1, side)
        gx, gy = np.meshgrid(np.floor(xs), np.floor(ys))
        coords = np.column_stack([gx.ravel(), gy.ravel()]).astype(np.int64)
        _predictions(ws, sid, coords, math.ceil(side), "dense", rng)
        print(f"{sid}: {w} x {h} px, {len(g.coords)} tiles on the grid, {len(coords)} dense tiles of {math.ceil(side)} px")
    print(f"workspace built in {time.perf_counter() - t:.1f} s")
    return ws


class Server:
    def __init__(self, ws: Path) -> None:
        import uvicorn

        from histokd.pipeline.view import bind
        from histokd.viewer.app import create_app, new_token
        from histokd.viewer.assets import require_assets
        from histokd.viewer.catalog import Catalog

        t = time.perf_counter()
        self.catalog = Catalog(ws)
        self.token = new_token()
        app = create_app(self.catalog, self.token, require_assets())
        self.catalog_s = time.perf_counter() - t
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.token}/"

    def get(self, path: str) -> tuple[float, bytes]:
        t = time.perf_counter()
        self.conn.request("GET", f"/{self.token}/{path}")
        r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status} {body[:200]!r}")
        return time.perf_counter() - t, body

    def stop(self) -> None:
        self.conn.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _stats(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"median {np.median(a):6.1f} ms, p95 {np.percentile(a, 95):6.1f} ms, max {a.max():6.1f} ms (n={len(a)})"


def latency(srv: Server, n: int, seed: int) -> dict:
    """``n`` random distinct tiles over every slide and the deepest 6 levels (where a viewer spends its time)."""
    rng = np.random.default_rng(seed)
    picks: set[tuple[str, int, int, int]] = set()
    sids = list(srv.catalog.slides)
    while len(picks) < n:
        sid = sids[int(rng.integers(len(sids)))]
        dz = srv.catalog.deepzoom(sid)
        level = int(rng.integers(max(0, dz.max_level - 5), dz.max_level + 1))
        cols, rows = dz.tile_count(level)
        picks.add((sid, level, int(rng.integers(cols)), int(rng.integers(rows))))
    order = sorted(picks, key=lambda _: rng.random())
    kinds = {"slide": "dzi/{s}_files/{lv}/{c}_{r}.jpeg",
             "overlay grid": "overlay/grid/p1/{s}_files/{lv}/{c}_{r}.png?t=0",
             "overlay dense (100k tiles)": "overlay/dense/p1/{s}_files/{lv}/{c}_{r}.png?t=0"}
    out: dict[str, list[float]] = {k: [] for k in kinds}
    sizes: dict[str, list[int]] = {k: [] for k in kinds}
    for sid, lv, c, r in order:  # the kinds interleaved, so that other load on the machine hits them alike
        for key, fmt in kinds.items():
            dt, body = srv.get(fmt.format(s=sid, lv=lv, c=c, r=r))
            out[key].append(dt * 1000)
            sizes[key].append(len(body))
    for k, v in out.items():
        print(f"  {k:28s} {_stats(v)}; mean {np.mean(sizes[k]) / 1024:.1f} KiB")
    return {k: {"median_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95)), "n": len(v),
                "mean_kib": float(np.mean(sizes[k]) / 1024)} for k, v in out.items()}


def first_image(ws: Path) -> dict:
    """A fresh server: catalogue + workspace JSON + .dzi + every tile of the level that fits 1024 px."""
    t0 = time.perf_counter()
    srv = Server(ws)
    try:
        _, doc = srv.get("api/workspace.json")
        sid = json.loads(doc)["slides"][0]["id"]
        srv.get(f"dzi/{sid}.dzi")
        dz = srv.catalog.deepzoom(sid)
        level = max(lv for lv in range(dz.max_level + 1) if max(dz.level_size(lv)) <= 1024)
        cols, rows = dz.tile_count(level)
        for r in range(rows):
            for c in range(cols):
                srv.get(f"dzi/{sid}_files/{level}/{c}_{r}.jpeg")
        total = time.perf_counter() - t0
        print(f"time to first image (HTTP, fresh server): {total * 1000:.0f} ms (catalogue {srv.catalog_s * 1000:.0f} ms, "
              f"{cols * rows} tiles of level {level})")
        out = {"http_ms": total * 1000, "catalog_ms": srv.catalog_s * 1000, "tiles": cols * rows}
    finally:
        srv.stop()
    return out


def first_image_browser(ws: Path, profile: Path) -> float | None:
    """Navigation to the first tile drawn, in headless Chromium (fresh server)."""
    import shutil

    if shutil.which("chromium") is None:
        print("time to first image in Chromium: chromium not on PATH, skipped")
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "viewer"))
    from chromium_pipe import Chromium

    srv = Server(ws)
    b = Chromium(profile)
    try:
        b.evaluate("1")
        t = time.perf_counter()
        b.send("Page.navigate", {"url": srv.url})
        b.wait_for("!!(window.histokdView && histokdView.loaded > 0)", 60)
        ms = (time.perf_counter() - t) * 1000
    finally:
        b.close()
        srv.stop()
    print(f"time to first image in Chromium (navigate -> first tile drawn): {ms:.0f} ms")
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=2)
    ap.add_argument("--size", type=int, default=4096, help="synthetic slide side, level-0 px")
    ap.add_argument("--dense", type=int, default=100_000, help="tiles of the dense prediction per slide")
    ap.add_argument("--requests", type=int, default=300, help="random deep-zoom tiles per kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("HISTOKD_NO_PROGRESS", "1")
    work = args.out or Path(tempfile.mkdtemp(prefix="histokd_view_bench_"))
    ws = work / "run"
    if not (ws / "predictions" / "dense").is_dir():
        ws = build(work, args.slides, args.size, args.dense)
    res = {"first_image": first_image(ws)}
    res["first_image"]["chromium_ms"] = first_image_browser(ws, work / "profile")
    srv = Server(ws)
    try:
        print(f"tile latency over {args.requests} random deep-zoom tiles per kind (cold, sequential):")
        res["latency"] = latency(srv, args.requests, args.seed)
    finally:
        srv.stop()
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

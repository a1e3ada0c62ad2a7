"""Issue 16: the readers of user files either parse or raise histokd's own error, never anything else.

Property-based (``hypothesis``): the cohort CSV reader (:func:`histokd.data.cohort.read_cohort`), the
GeoJSON and ASAP XML annotation readers (:func:`histokd.slides.annotations.read_annotations`) and the
mask loader that reads the same files for ground truth (:func:`histokd.slides.masks.load_mask`). Each
test is bounded (``max_examples``, no deadline) so that the file runs in seconds. Also the issue's
cases by name: GeoJSON coordinates that are flat, strings or NaN, and an ASAP XML without coordinates
(that one used to give a tumour slide an all-negative ground truth without a word).
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from histokd.data.cohort import read_cohort
from histokd.errors import HistokdError, InputError
from histokd.slides.annotations import read_annotations
from histokd.slides.masks import load_mask

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
DIMS = (1000, 800)


_FOLDER = Path(tempfile.mkdtemp(prefix="histokd-fuzz-"))
atexit.register(shutil.rmtree, _FOLDER, True)


def _write(data: bytes | str, suffix: str) -> Path:
    """The input file of one example, overwritten by the next (hypothesis runs many examples per test)."""
    path = _FOLDER / f"input{suffix}"
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(data)
    return path


def _parses_or_histokd_error(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a HistokdError is a valid outcome (one line, naming the file), anything else fails."""
    try:
        return fn(*args, **kwargs)
    except HistokdError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return e


# --------------------------------------------------------------------------------------------------
# cohort CSV
# --------------------------------------------------------------------------------------------------
COLUMNS = ["slide_id", "path", "label", "split", "patient_id", "mask_path", "tissue_mask_path", "paired_path",
           "paired_affine", "", " label ", "Label"]
CELL_BITS = ["", " ", ",", '"', "'", "=", "+1", "-", "@", "\t", "\r", "\n", "\x00", "\ufeff", "tumour", "Tumor",
             "normal", "train", "val", "test", "a/b", "..", "~", "/tmp", "1,2,3,4,5,6", "nan", "inf", "é", "𝔘",
             "x" * 250, "\\", "../..", "C:\\x", ";"]
cells = st.lists(st.sampled_from(CELL_BITS) | st.text(max_size=12), max_size=4).map("".join)


REQUIRED = ["slide_id", "path", "label"]


@st.composite
def cohort_texts(draw: st.DrawFn) -> str:
    """Mostly a cohort with the required columns (so that rows reach the row checks), sometimes not."""
    extra = st.lists(st.sampled_from(COLUMNS) | st.text(max_size=8), max_size=4)
    header = draw(st.builds(lambda e: REQUIRED + e, extra) | st.builds(lambda e: REQUIRED[::-1] + e, extra) | extra)
    width = max(1, len(header))
    rows = draw(st.lists(st.lists(cells, min_size=width - 1, max_size=width + 1), max_size=6))
    sep = draw(st.sampled_from([",", ",", ",", ";", "\t"]))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))

    def line(values: list[str]) -> str:
        quote = draw(st.booleans())
        return sep.join('"' + v.replace('"', '""') + '"' if quote else v for v in values)

    return draw(st.sampled_from(["", "\ufeff"])) + end.join(line(r) for r in [header, *rows]) + draw(
        st.sampled_from(["", end, end * 3]))


@FUZZ
@given(text=cohort_texts(), drop_invalid=st.booleans(),
       label_map=st.none() | st.sampled_from(["tumor=tumour", "a=b,=c", "x", "=", "Tumor=tumour,tumour=Tumor"]))
def test_fuzz_cohort_csv_text(text: str, drop_invalid: bool, label_map: str | None):
    path = _write(text, ".csv")
    _parses_or_histokd_error(read_cohort, path, drop_invalid=drop_invalid, label_map=label_map)


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_cohort_csv_bytes(data: bytes):
    path = _write(b"slide_id,path,label\n" + data, ".csv")
    _parses_or_histokd_error(read_cohort, path, drop_invalid=True)


# --------------------------------------------------------------------------------------------------
# GeoJSON
# --------------------------------------------------------------------------------------------------
numbers = (st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([10**400, -(10**30), 1e300, 0.5]))
json_scalars = st.none() | st.booleans() | numbers | st.text(max_size=6)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=12)
point = st.lists(numbers, min_size=2, max_size=3)
ring = st.lists(point, min_size=0, max_size=6)
valid_ring = st.just([[100, 100], [400, 100], [400, 500], [100, 500], [100, 100]])
GEOMETRY_TYPES = ["Polygon", "MultiPolygon", "Point", "LineString", "GeometryCollection", "polygon", "Topology"]


@st.composite
def coordinates(draw: st.DrawFn) -> Any:
    """Polygon / MultiPolygon coordinates, well-formed or broken at one level."""
    kind = draw(st.sampled_from(["rings", "multi", "flat", "flatter", "junk", "valid"]))
    if kind == "rings":
        return draw(st.lists(ring | valid_ring, max_size=3))
    if kind == "multi":
        return draw(st.lists(st.lists(ring | valid_ring, max_size=2), max_size=2))
    if kind == "flat":
        return draw(ring)
    if kind == "flatter":
        return draw(st.lists(numbers, max_size=8))
    if kind == "valid":
        return [draw(valid_ring)]
    return draw(json_values)


@st.composite
def geometries(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(GEOMETRY_TYPES))
    if kind == "GeometryCollection":
        return {"type": kind, "geometries": draw(st.lists(st.builds(
            lambda t, c: {"type": t, "coordinates": c}, st.sampled_from(GEOMETRY_TYPES), coordinates()), max_size=2)
            | json_values)}
    return {"type": kind, "coordinates": draw(coordinates())}


properties = st.none() | json_values | st.fixed_dictionaries({}, optional={
    "classification": json_values | st.fixed_dictionaries({"name": json_values}),
    "name": json_values, "class": json_values})
features = st.builds(lambda g, p: {"type": "Feature", "geometry": g, "properties": p},
                     geometries() | json_values, properties)
geojson_docs = (st.builds(lambda fs: {"type": "FeatureCollection", "features": fs}, st.lists(features, max_size=4))
                | st.lists(features, max_size=3) | features | geometries() | json_values)


@FUZZ
@given(doc=geojson_docs, suffix=st.sampled_from([".geojson", ".json"]))
def test_fuzz_geojson_readers(doc: Any, suffix: str):
    path = _write(json.dumps(doc), suffix)
    anns = _parses_or_histokd_error(read_annotations, path)
    out = _parses_or_histokd_error(load_mask, path, DIMS, downsample=8)
    _parses_or_histokd_error(load_mask, path, DIMS, classes=["Tumor"])
    if isinstance(out, tuple):
        assert out[0].shape == (100, 125) and out[0].dtype == bool
        assert isinstance(anns, list)  # both readers accept the same files
    else:
        assert isinstance(anns, HistokdError)


@FUZZ
@given(text=st.text(max_size=200) | st.sampled_from(['{"type": "FeatureCollection", "features": [', "[" * 5000,
                                                       "NaN", '{"type": "Feature"}', "\ufeff{}"]))
def test_fuzz_geojson_text(text: str):
    path = _write(text, ".geojson")
    _parses_or_histokd_error(read_annotations, path)
    _parses_or_histokd_error(load_mask, path, DIMS)


# --------------------------------------------------------------------------------------------------
# ASAP XML
# --------------------------------------------------------------------------------------------------
xml_values = (st.sampled_from(["100", "400.5", "-3", "1e3", "nan", "inf", "-inf", "", "x", "1e400", "0x10", " 7 "])
              | st.text(max_size=6) | numbers.map(str))


@st.composite
def coordinate_elements(draw: st.DrawFn) -> str:
    attrs = draw(st.dictionaries(st.sampled_from(["Order", "X", "Y", "Z"]), xml_values, max_size=4))
    return "<Coordinate " + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items()) + "/>"


valid_coordinates = st.just("".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>'
                                    for i, (x, y) in enumerate([(100, 100), (400, 100), (400, 500)])))


@st.composite
def asap_docs(draw: st.DrawFn) -> str:
    anns = []
    for _ in range(draw(st.integers(0, 3))):
        typ = draw(st.sampled_from(["Polygon", "Spline", "Rectangle", "Dot", "PointSet", "", "weird"]))
        group = draw(st.sampled_from(["_0", "_1", "_2", "Tumor", "None", "", "Exclusion"]))
        coords = "".join(draw(st.lists(coordinate_elements() | valid_coordinates, max_size=5)))
        wrap = draw(st.sampled_from(["<Coordinates>{}</Coordinates>", "{}", "<Vertices>{}</Vertices>", ""]))
        anns.append(f'<Annotation Name="a" Type={quoteattr(typ)} PartOfGroup={quoteattr(group)}>'
                    f'{wrap.format(coords)}</Annotation>')
    root = draw(st.sampled_from(["ASAP_Annotations", "Annotations", "x"]))
    body = "".join(anns)
    tail = draw(st.sampled_from(["", "", "<!-- cut", "</Annotations>"]))
    return f'<?xml version="1.0"?><{root}><Annotations>{body}</Annotations></{root}>{tail}'


@FUZZ
@given(doc=asap_docs() | st.text(max_size=120))
def test_fuzz_asap_xml_readers(doc: str):
    path = _write(doc, ".xml")
    anns = _parses_or_histokd_error(read_annotations, path)
    out = _parses_or_histokd_error(load_mask, path, DIMS, downsample=8)
    assert isinstance(anns, HistokdError) == isinstance(out, HistokdError)


# --------------------------------------------------------------------------------------------------
# the cases, by name
# --------------------------------------------------------------------------------------------------
SQUARE = [[100, 100], [400, 100], [400, 500], [100, 500], [100, 100]]


def _feature(coords: Any, kind: str = "Polygon") -> dict:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": kind, "coordinates": coords}}]}


@pytest.mark.parametrize("coords, what", [
    (SQUARE, r"feature 0 \(Polygon\): coordinates are one level too flat \(\[\[x, y\], \.\.\.\]\)"),
    ([v for p in SQUARE for v in p], r"feature 0 \(Polygon\): coordinates are a flat list of numbers"),
    ([[[str(x), str(y)] for x, y in SQUARE]], r"feature 0 \(Polygon\): coordinate '100' is not a number"),
    ([[[100, 100], [float("nan"), 100], [400, 500], [100, 100]]], r"coordinate nan is not a finite number"),
    ([[[100, 100], [1e300, 100], [400, 500], [100, 100]]], r"coordinate 1e\+300 lies outside any slide"),
    ([[[100, 100], [True, 100], [400, 500], [100, 100]]], r"coordinate True is not a number"),
    ([["a", "b", "c"]], r"position 'a' is not \[x, y\]"),
])
def test_malformed_geojson_coordinates_are_one_line(tmp_path: Path, coords: Any, what: str):
    path = tmp_path / "mask.geojson"
    path.write_text(json.dumps(_feature(coords)))
    for read in (lambda: read_annotations(path), lambda: load_mask(path, DIMS)):
        with pytest.raises(InputError, match=what) as e:
            read()
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg
        assert msg.endswith("; fix the file or export the annotations again from QuPath (a GeoJSON Polygon is "
                            "[[[x, y], ...], ...] in level-0 px)")


def test_geojson_without_any_area_is_refused_not_an_empty_mask(tmp_path: Path):
    path = tmp_path / "points.geojson"
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [5, 5]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                                                           "coordinates": [[[1, 1], [2, 2], [3, 3], [1, 1]]]}}]}
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"no polygon with an area among 2 feature\(s\) \(1 Point, 1 empty or "
                                         r"degenerate polygons\), so the mask would be empty; annotate regions"):
        load_mask(path, DIMS)
    # nothing annotated at all is an empty mask, as QuPath exports it for a normal slide
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    mask, _ = load_mask(path, DIMS)
    assert not mask.any()


def test_well_formed_geojson_still_reads(tmp_path: Path):
    path = tmp_path / "ok.geojson"
    doc = _feature([SQUARE, [[200, 200], [300, 200], [300, 300], [200, 300], [200, 200]]])
    doc["features"].append({"type": "Feature", "properties": {"name": "pt"},
                            "geometry": {"type": "Point", "coordinates": [5, 5]}})
    path.write_text(json.dumps(doc))
    (ann,) = read_annotations(path)
    assert ann.name == "Tumor" and ann.geometry.area == pytest.approx(300 * 400 - 100 * 100)
    mask, ds = load_mask(path, DIMS, downsample=10)
    assert mask.sum() == pytest.approx(30 * 40 - 10 * 10, abs=80) and not mask[25, 25] and mask[15, 15]


ASAP_NO_COORDS = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
  <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58"><Coordinates/></Annotation>
  <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58"></Annotation>
</Annotations></ASAP_Annotations>
"""

IMAGESCOPE = """<?xml version="1.0"?>
<Annotations><Annotation Id="1"><Regions><Region Id="1"><Vertices>
<Vertex X="100" Y="100"/><Vertex X="400" Y="100"/><Vertex X="400" Y="500"/>
</Vertices></Region></Regions></Annotation></Annotations>
"""


def test_asap_xml_without_coordinates_is_refused_not_all_negative(tmp_path: Path):
    """It used to give a tumour slide an all-negative ground truth without a word."""
    path = tmp_path / "t1.xml"
    path.write_text(ASAP_NO_COORDS)
    for read in (lambda: read_annotations(path), lambda: load_mask(path, DIMS)):
        with pytest.raises(InputError) as e:
            read()
        msg = str(e.value)
        assert msg == (f"{path}: annotation(s) 'Annotation 0' (0), 'Annotation 1' (0) have no polygon: fewer than "
                       f"the 3 <Coordinate X= Y=/> elements of a polygon (counts in brackets) or no area, so the mask "
                       f"would be empty; export the annotations again from ASAP (or as QuPath GeoJSON)")
    path.write_text(IMAGESCOPE)
    with pytest.raises(InputError, match=r"\(<Vertex> elements: an Aperio ImageScope XML, which histokd does not read\)"):
        load_mask(path, DIMS)


@pytest.mark.parametrize("x", ["nan", "inf", "abc", "1e400", ""])
def test_asap_xml_non_finite_coordinate_is_one_line(tmp_path: Path, x: str):
    path = tmp_path / "bad.xml"
    path.write_text(f'<ASAP_Annotations><Annotations><Annotation Name="A" Type="Polygon" PartOfGroup="_0">'
                    f'<Coordinates><Coordinate Order="0" X="{x}" Y="1"/><Coordinate Order="1" X="5" Y="1"/>'
                    f'<Coordinate Order="2" X="5" Y="9"/></Coordinates></Annotation></Annotations></ASAP_Annotations>')
    with pytest.raises(InputError, match=r"annotation 'A' has a coordinate without finite numeric X/Y"):
        load_mask(path, DIMS)


def test_one_degenerate_asap_annotation_next_to_good_ones_is_left_out(tmp_path: Path):
    path = tmp_path / "mixed.xml"
    good = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate([(0, 0), (80, 0), (80, 80)]))
    path.write_text(f'<ASAP_Annotations><Annotations>'
                    f'<Annotation Name="good" Type="Polygon" PartOfGroup="_0"><Coordinates>{good}</Coordinates></Annotation>'
                    f'<Annotation Name="stray click" Type="Polygon" PartOfGroup="_0"><Coordinates>'
                    f'<Coordinate Order="0" X="5" Y="5"/></Coordinates></Annotation>'
                    f'</Annotations></ASAP_Annotations>')
    (ann,) = read_annotations(path)
    assert ann.name == "_0" and math.isclose(ann.geometry.area, 80 * 80 / 2)
    mask, _ = load_mask(path, DIMS, downsample=8)
    assert np.count_nonzero(mask) > 0


def test_a_path_naming_an_unknown_user_is_not_a_crash(tmp_path):
    from histokd.data.cohort import read_cohort
    from histokd.errors import HistokdError
    from histokd.slides.reader import open_slide

    csv = tmp_path / "c.csv"
    csv.write_text('slide_id,path,label\na,~"nouser/x.tif,tumour\nb,~nosuchuser42/y.tif,normal\n')
    try:
        read_cohort(csv)
    except HistokdError:
        pass  # a one-line refusal is fine; a RuntimeError from pathlib was not
    with pytest.raises(HistokdError, match="not found"):
        open_slide("~nosuchuser42/y.tif")

"""A small synthetic cohort shared by the synth tests (4 slides of 1024 px, generated once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from histokd.synth.generate import synth

SIZE = 1024  # keep in sync with the tests' SIZE


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a 4-slide easy cohort (2 tumour, 2 normal; 0.5 and 0.25 µm/px)."""
    out = tmp_path_factory.mktemp("synth_cohort")
    # small lymphoid aggregates, so that a 1024-px slide at 0.25 µm/px (256 µm) keeps normal stroma
    csv = synth(out, slides=4, seed=3, preset="easy", size=SIZE, workers=1, show_progress=False,
                overrides={"lymph_radius_um": (30.0, 60.0)})
    assert csv == out / "cohort.csv"
    return out


@pytest.fixture(scope="session")
def load_meta():  # noqa: ANN201 - returns a function
    """``load_meta(cohort, slide_id) -> dict``: the per-slide metadata JSON."""

    def _load(cohort: Path, slide_id: str) -> dict:
        return json.loads((cohort / "meta" / f"{slide_id}.json").read_text())

    return _load

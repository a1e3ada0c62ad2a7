"""bench on workspace:RUN:ENC makes the instance labels (contract 6) that no stage made yet, at label's threshold."""

from __future__ import annotations

import numpy as np

import histokd.data.bags as bags_mod
from histokd.data.bags import write_instance_labels
from histokd.pipeline.bench import _ensure_instance_labels
from histokd.workspace import Workspace


def _calls(monkeypatch) -> list[tuple[str, float]]:
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(bags_mod, "ensure_instance_labels",
                        lambda ws, enc, threshold=0.5, **kw: calls.append((enc, threshold)) or {})
    return calls


def test_fresh_workspace_gets_instance_labels_at_the_default(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "run")
    ws.features_dir("enc").mkdir(parents=True)
    calls = _calls(monkeypatch)
    _ensure_instance_labels(f"workspace:{ws.root}:enc")
    assert calls == [("enc", 0.5)]


def test_labels_written_by_label_keep_their_threshold(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "run")
    write_instance_labels(ws.features_dir("enc") / "instance_labels" / "s1.h5", np.array([0.2, 0.8]), 0.7)
    calls = _calls(monkeypatch)
    _ensure_instance_labels(f"workspace:{ws.root}:enc")
    assert calls == [("enc", 0.7)]


def test_other_datasets_write_nothing(monkeypatch):
    calls = _calls(monkeypatch)
    for spec in ("digit-bags", "mil-csv:musk1", "workspace:nope", "workspace:/does/not/exist:enc"):
        _ensure_instance_labels(spec)
    assert calls == []

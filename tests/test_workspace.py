import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from histokd.errors import InputError
from histokd.workspace import (
    Workspace,
    WorkspaceBusy,
    atomic_path,
    check_id,
    clean_stale_temps,
    encoder_dirname,
    write_json,
    writer_lock,
)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a\\b", "..", ".hidden", "a..b", "<script>"])
def test_check_id_refuses_unsafe(bad):
    with pytest.raises(InputError, match="rename it"):
        check_id(bad)


@pytest.mark.parametrize("good", ["slide_001", "TCGA-AB-1234.01", "s1"])
def test_check_id_accepts_safe(good):
    assert check_id(good) == good


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_on_success(tmp_path: Path):
    target = tmp_path / "sub" / "out.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}")
    assert '"a": 2' in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_clean_stale_temps_removes_only_dead_histokd_temps(tmp_path: Path):
    (tmp_path / f".x.h5.histokd-{_dead_pid()}-abc.tmp").write_text("stale: its run is gone")
    (tmp_path / f".y.h5.histokd-{os.getpid()}-abc.tmp").write_text("a live run's")
    (tmp_path / ".mine.tmp").write_text("the user's own hidden temp file")
    (tmp_path / ".z.h5.abc.tmp").write_text("not a histokd name")
    (tmp_path / "keep.h5").write_text("ok")
    assert clean_stale_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".y.h5.histokd-{os.getpid()}-abc.tmp", ".mine.tmp", ".z.h5.abc.tmp", "keep.h5"])


def test_atomic_temp_names_carry_the_tag_and_pid(tmp_path: Path):
    with atomic_path(tmp_path / "a.h5") as tmp:
        assert tmp.name.startswith(f".a.h5.histokd-{os.getpid()}-") and tmp.name.endswith(".tmp")
        tmp.write_text("x")


_HOLDER = """
import sys, time
from histokd.workspace import writer_lock
with writer_lock(sys.argv[1], command="histokd embed -w RUN"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_writer_lock_refuses_a_second_writer_and_survives_kill_9(tmp_path: Path):
    folder = tmp_path / "features" / "enc"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkspaceBusy, match=rf"being written by pid {holder.pid} on .*histokd embed -w RUN.*--wait"):
            with writer_lock(folder):
                pass
        with writer_lock(tmp_path / "features" / "other"):  # another folder: no conflict
            pass
    finally:
        holder.kill()  # SIGKILL: no clean-up ran
        holder.wait()
    with writer_lock(folder, command="second"):  # the system released the dead holder's lock
        assert json.loads((folder / ".histokd.lock.json").read_text())["command"] == "second"
    assert not (folder / ".histokd.lock.json").exists()


def test_writer_lock_wait_blocks_until_free(tmp_path: Path):
    import time

    folder = tmp_path / "models" / "m"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER.replace("time.sleep(60)", "time.sleep(1.5)"), str(folder)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    with writer_lock(folder, wait=True):
        waited = time.monotonic() - t0
    holder.wait()
    assert waited > 0.5  # it waited for the holder's 1.5 s instead of being refused


def test_artefact_paths_come_from_the_workspace(tmp_path):
    from histokd.workspace import EncoderFiles, ModelFiles, Workspace

    ws = Workspace(tmp_path / "run")
    m = ws.model_files("m1")
    assert isinstance(m, ModelFiles) and m.dir == ws.model_dir("m1")
    assert [p.name for p in (m.weights, m.config, m.classes, m.metrics, m.log, m.splits)] == [
        "model.pt", "config.yaml", "classes.json", "metrics.json", "train.log", "splits.csv"]
    assert ws.predictions_bags_csv("m1") == ws.predictions_dir("m1") / "bags.csv"
    assert ws.predictions_metrics("m1") == ws.predictions_dir("m1") / "metrics.json"
    assert ws.predictions_mask_png("m1", "s") == ws.predictions_dir("m1") / "masks" / "s.png"
    assert ws.predictions_pixel_metrics("m1") == ws.predictions_dir("m1") / "pixel_metrics.json"
    assert m.pixel_metrics == m.dir / "pixel_metrics.json"
    e = ws.encoder_files("enc1")
    assert isinstance(e, EncoderFiles) and e.dir == ws.encoders_dir() / "enc1"
    assert [p.name for p in (e.weights, e.config, e.provenance, e.metrics)] == [
        "model.pt", "config.yaml", "provenance.json", "metrics.json"]
    assert ws.report_index("m1") == ws.reports_dir("m1") / "index.html"
    assert ws.report_tiles_csv("m1").name == "tiles.csv"
    assert ws.report_heatmap("m1", "s") == ws.reports_dir("m1") / "heatmaps" / "s.png"
    assert ws.report_geojson("m1", "s") == ws.reports_dir("m1") / "geojson" / "s.geojson"
    assert ws.report_plot("m1", "roc") == ws.reports_dir("m1") / "plots" / "roc.png"
    inst = ws.instance_labels_h5("enc", "s")
    assert inst == ws.features_dir("enc") / "instance_labels" / "s.h5"
    assert Workspace.of_features_file(ws.features_h5("enc", "s")).root == ws.root.resolve()

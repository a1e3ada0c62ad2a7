from pathlib import Path

import pytest

from histokd.errors import InputError
from histokd.workspace import Workspace, atomic_path, check_id, clean_stale_temps, encoder_dirname, write_json


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


def test_clean_stale_temps(tmp_path: Path):
    (tmp_path / ".x.h5.abc.tmp").write_text("stale")
    (tmp_path / "keep.h5").write_text("ok")
    assert clean_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.h5"]


def test_workspace_paths(tmp_path: Path):
    ws = Workspace(tmp_path)
    assert ws.tiles_h5("s1") == tmp_path / "tiles" / "s1.h5"
    assert ws.features_h5("timm:vit_small", "s1").parent.name == "timm_vit_small"
    assert encoder_dirname("mfl:/a/b/c") == "mfl_a_b_c"
    with pytest.raises(InputError):
        ws.model_dir("../escape")


def test_atomic_files_follow_umask(tmp_path: Path):
    import os

    old = os.umask(0o022)
    try:
        p = write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o644

"""``histokd bench --engine ray``: the folds on a (local) Ray cluster give the local run's records."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from histokd.pipeline.bench import bench

ray = pytest.importorskip("ray")

TIMINGS = {"fit_seconds"}


def _metrics(res: dict) -> dict:
    return {m: [{k: v for k, v in f.items() if k not in TIMINGS} for f in r["folds"]] for m, r in res["methods"].items()}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_folds_on_ray_equal_the_local_run():
    kw = dict(dataset="digit-bags", methods="abmil,meanpool", protocol="cv:3x1", seed=3,
              overrides=["train.max_epochs=3"])
    local = bench(**kw)
    temp = tempfile.mkdtemp(prefix="hkray")  # Ray's socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        remote = bench(**kw, engine="ray")
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert _metrics(remote) == _metrics(local)
    assert [len(r["folds"]) for r in remote["methods"].values()] == [3, 3]


def test_unknown_engine_is_refused():
    from histokd.errors import InputError

    with pytest.raises(InputError, match="--engine 'spark': choose local or ray"):
        bench("digit-bags", "abmil", engine="spark")

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest

from histokd.pipeline.embed import embed
from histokd.features.store import read_features

ray = pytest.importorskip("ray")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_engine_equals_local(workspace, tmp_path):
    local = embed(workspace, "handcrafted", workers=0, batch_size=8)
    ref = {s: read_features(workspace.features_h5("handcrafted", s)).features for s in local.written}
    for p in workspace.features_dir("handcrafted").glob("*.h5"):
        p.unlink()
    # Ray's unix socket paths must stay under 108 bytes: a short temp dir, not pytest's long tmp_path
    temp = tempfile.mkdtemp(prefix="hkray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        res = embed(workspace, "handcrafted", workers=0, batch_size=8, engine="ray")
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert sorted(res.written) == sorted(local.written) and not res.failed
    for sid, feats in ref.items():
        np.testing.assert_allclose(read_features(workspace.features_h5("handcrafted", sid)).features, feats,
                                   rtol=1e-5, atol=1e-6)

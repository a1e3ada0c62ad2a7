"""Packed bags and side-by-side training: segment ops, the stacked model against its members, and members
trained side by side against the same models trained one at a time by the padded-batch loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histokd.data.bags import BagDataset, collate_bags
from histokd.data.benchmarks import digit_bags
from histokd.engine import TrainerConfig, fit_mil
from histokd.engine.loop import packed_path
from histokd.engine.packed import MaskDropout, StackedMIL, keep_mask, segment_max, segment_softmax, segment_sum, stackable
from histokd.engine.side_by_side import bucket_rows, fit_side_by_side, pack, stacked_bag_probs
from histokd.models import build_model


def test_segment_ops_equal_per_segment_torch() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [3, 1, 5, 2]
    logits = torch.randn(sum(sizes), generator=g) * 30  # large: the per-segment shift must keep it finite
    vals = torch.randn(sum(sizes), 4, generator=g)
    idx = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    soft, ssum, smax = segment_softmax(logits, idx, 4), segment_sum(vals, idx, 4), segment_max(vals, idx, 4)
    for k, (lo, hi) in enumerate(zip(np.cumsum([0, *sizes[:-1]]), np.cumsum(sizes))):
        torch.testing.assert_close(soft[lo:hi], torch.softmax(logits[lo:hi], 0))
        torch.testing.assert_close(ssum[k], vals[lo:hi].sum(0))
        torch.testing.assert_close(smax[k], vals[lo:hi].amax(0))


MODELS = [("abmil", {"hidden": [16, 8], "attn_dim": 8}), ("gated-abmil", {"hidden": [16], "attn_dim": 8}),
          ("meanpool", {"hidden": [16]}), ("maxpool", {"hidden": [16]}), ("abmil", {"hidden": [], "attn_dim": 8})]


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("name,args", MODELS)
def test_stacked_forward_equals_each_member(name: str, args: dict, ragged: bool, bucket: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import histokd.engine.side_by_side as sbs

    monkeypatch.setattr(sbs, "RAGGED_MIN_ROWS", 0 if ragged else 10**9)
    torch.manual_seed(0)
    models = [build_model(name, 6, 2, args).eval() for _ in range(3)]
    assert all(stackable(m) for m in models)
    g = torch.Generator().manual_seed(1)
    bags = [[torch.randn(n, 6, generator=g) for n in sizes] for sizes in ([4, 1, 7], [2, 9], [])]
    x, seg = pack(bags, 3, 6, bucket=bucket)
    assert isinstance(x, list) == ragged
    if bucket:  # every member padded to a bucketed row count, the padding in the dropped slot 3
        rows = [len(r) for r in x] if ragged else [x.shape[1]]
        assert all(r == bucket_rows(r) and r >= 16 for r in rows)
    stacked = StackedMIL(models).eval()
    with torch.no_grad():
        logits = stacked(x, seg, 3)
    for e, (m, member_bags) in enumerate(zip(models, bags)):
        for b, bag in enumerate(member_bags):  # each bag alone through the member's own forward
            with torch.no_grad():
                torch.testing.assert_close(logits[e, b], m(bag.unsqueeze(0)).bag_logits[0], atol=1e-5, rtol=1e-5)
        if member_bags:  # and as a padded batch (the mask hides the padding as the segments do)
            batch = collate_bags([type("B", (), {"features": t, "label": 0, "slide_id": "s", "instance_labels": None})()
                                  for t in member_bags])
            with torch.no_grad():
                torch.testing.assert_close(logits[e, :len(member_bags)], m(batch.x, batch.mask).bag_logits,
                                           atol=1e-5, rtol=1e-5)


def test_bucket_rows_pads_by_less_than_a_quarter_with_four_sizes_an_octave() -> None:
    sizes = [bucket_rows(n) for n in range(1, 5000)]
    assert all(b >= n for n, b in zip(range(1, 5000), sizes))
    assert all(b < 1.25 * n for n, b in zip(range(17, 5000), sizes[16:]))
    assert sorted(set(b for b in sizes if 256 < b <= 512)) == [320, 384, 448, 512]
    assert bucket_rows(1) == bucket_rows(16) == 16


@pytest.mark.parametrize("p", [0.25, 0.1, 0.5])
def test_keep_mask_keeps_one_minus_p_and_follows_the_torch_seed(p: float) -> None:
    torch.manual_seed(3)
    m = keep_mask((400, 500), p)
    assert m.dtype == torch.bool and m.shape == (400, 500)
    assert abs(m.float().mean().item() - (1 - p)) < 0.005
    torch.manual_seed(3)
    assert torch.equal(keep_mask((400, 500), p), m)
    assert not torch.equal(keep_mask((400, 500), p), m)  # the next draw differs


def test_mask_dropout_is_inverted_dropout() -> None:
    drop = MaskDropout(0.25)
    x = torch.ones(1000, 64, requires_grad=True)
    y = drop(x)
    vals = sorted(torch.unique(y.detach()).tolist())
    assert vals == [0.0, pytest.approx(1 / 0.75)]
    assert abs(y.mean().item() - 1.0) < 0.02  # the expectation is kept
    y.sum().backward()  # the gradient flows through the kept elements only, scaled
    assert torch.equal(x.grad != 0, y.detach() != 0)
    drop.eval()
    assert drop(x) is x


def test_stacked_models_use_the_mask_dropout_with_the_models_rate() -> None:
    models = [build_model("abmil", 6, 2, {"hidden": [8, 8], "attn_dim": 4, "dropout": 0.3}) for _ in range(2)]
    stacked = StackedMIL(models)
    drops = [m for m in stacked.encoder if isinstance(m, MaskDropout)]
    assert len(drops) == 2 and all(d.p == pytest.approx(0.3) for d in drops)
    assert not any(isinstance(m, torch.nn.Dropout) for m in stacked.modules())


@pytest.mark.parametrize("ragged", [False, True])
def test_bf16_packing_is_close_to_fp32(ragged: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import histokd.engine.side_by_side as sbs

    monkeypatch.setattr(sbs, "RAGGED_MIN_ROWS", 0 if ragged else 10**9)
    torch.manual_seed(0)
    stacked = StackedMIL([build_model("abmil", 6, 2, {"hidden": [16, 8], "attn_dim": 8}) for _ in range(2)]).eval()
    g = torch.Generator().manual_seed(2)
    bags = [[torch.randn(n, 6, generator=g) for n in sizes] for sizes in ([30, 2], [1])]
    with torch.no_grad():
        ref = stacked(*pack(bags, 2, 6), 2)
        x, seg = pack(bags, 2, 6, **sbs._packing("bf16-mixed"))
        assert (x[0] if ragged else x).dtype == torch.bfloat16
        with torch.autocast("cpu", torch.bfloat16):
            got = stacked(x, seg, 2)
    torch.testing.assert_close(got.float()[0], ref[0], atol=0.05, rtol=0.05)
    torch.testing.assert_close(got.float()[1, :1], ref[1, :1], atol=0.05, rtol=0.05)


def test_models_without_a_packed_form_keep_the_padded_loop() -> None:
    for name in ("chowder", "transmil", "dsmil", "clam-sb"):
        assert not stackable(build_model(name, 8, 2))
    ens = build_model("abmil", 8, 2, {"n_ensemble": 2})
    assert not stackable(ens)
    m = build_model("abmil", 8, 2)
    assert packed_path(m, TrainerConfig()) and not packed_path(m, TrainerConfig(bag_packing="padded"))
    assert not packed_path(m, TrainerConfig(strategy="ddp", devices=2))
    assert not packed_path(m, TrainerConfig(), extra_loss=lambda *a: None)


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import histokd.engine.side_by_side as sbs

    cpu = torch.device("cpu")
    for native, want in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(sbs, "native_bf16", lambda native=native: native)
        assert sbs.resolve_stack_precision(TrainerConfig(), cpu) == want
        assert sbs.resolve_stack_precision(TrainerConfig(precision="32-true"), cpu) == "32-true"
        assert sbs.resolve_stack_precision(TrainerConfig(precision="bf16-mixed"), cpu) == "bf16-mixed"


def _folds(n: int = 3) -> tuple[list[BagDataset], list[BagDataset]]:
    ds = digit_bags(n_bags=40, bag_size=8, seed=0)
    rng = np.random.default_rng(0)
    trains, vals = [], []
    for k in range(n):  # folds of different sizes: members' epochs differ in length
        idx = rng.permutation(len(ds))
        trains.append(ds.subset(idx[: 24 + k]))
        vals.append(ds.subset(idx[30:]))
    return trains, vals


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("train_kw", [
    {"optimizer": "adam", "batch_size": 3},
    {"optimizer": "adamw", "batch_size": 1, "grad_clip": 0.5, "lr_schedule": "cosine", "warmup_epochs": 1},
    {"optimizer": "sgd", "batch_size": 4, "lr": 1e-2, "max_instances": 5},
])
def test_side_by_side_equals_one_at_a_time(train_kw: dict, ragged: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """No dropout: each member ends where its own padded-loop run ends (weights, history, best epoch), with
    steps packed padded or ragged."""
    import histokd.engine.side_by_side as sbs

    monkeypatch.setattr(sbs, "RAGGED_MIN_ROWS", 0 if ragged else 10**9)
    monkeypatch.setattr(sbs, "RAGGED_WASTE", 0.0 if ragged else 1.5)
    trains, vals = _folds()
    kw = {"max_epochs": 4, "lr": 3e-3, "accelerator": "cpu", "patience": 2, "precision": "32-true", **train_kw}
    cfg = TrainerConfig(**kw)
    args = {"hidden": [16], "attn_dim": 8, "dropout": 0.0}
    seeds = [5, 6, 7]

    def model(seed: int):
        torch.manual_seed(seed)
        return build_model("abmil", trains[0].dim, 2, args)

    alone = [fit_mil(model(s), tr, va, TrainerConfig(**kw, bag_packing="padded"), seed=s)
             for tr, va, s in zip(trains, vals, seeds)]
    together = fit_side_by_side([model(s) for s in seeds], trains, vals, cfg, seeds)
    for a, b in zip(alone, together):
        assert a.best_epoch == b.best_epoch and len(a.history) == len(b.history)
        for ra, rb in zip(a.history, b.history):
            assert ra["train_bags"] == rb["train_bags"]
            np.testing.assert_allclose([ra["train_loss"], ra["val_loss"]], [rb["train_loss"], rb["val_loss"]],
                                       rtol=1e-4, atol=1e-5)
        for (k, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            torch.testing.assert_close(pa, pb, atol=1e-4, rtol=1e-4, msg=k)


def test_stacked_bag_probs_chunk_large_bags(monkeypatch: pytest.MonkeyPatch) -> None:
    import histokd.engine.side_by_side as sbs

    torch.manual_seed(0)
    models = [build_model("abmil", 4, 2, {"hidden": [8], "attn_dim": 4}).eval() for _ in range(2)]
    g = torch.Generator().manual_seed(0)
    bags = [[torch.randn(n, 4, generator=g) for n in (5, 30, 2)], [torch.randn(12, 4, generator=g)]]
    full = stacked_bag_probs(StackedMIL(models), bags)
    monkeypatch.setattr(sbs, "PREDICT_ROWS", 8)  # one bag per chunk; a bag above the limit still goes whole
    chunked = stacked_bag_probs(StackedMIL(models), bags)
    for f, c, m, b in zip(full, chunked, models, bags):
        np.testing.assert_allclose(f, c, atol=1e-6)
        with torch.no_grad():
            own = torch.softmax(torch.cat([m(t.unsqueeze(0)).bag_logits for t in b]), -1).numpy()
        np.testing.assert_allclose(f, own, atol=1e-5)


def test_bench_groups_equal_one_at_a_time_without_dropout() -> None:
    from histokd.pipeline.bench import bench, fold_groups

    ds = digit_bags(n_bags=30, bag_size=6, seed=1)
    kw = dict(methods="abmil", protocol="cv:3x1", seed=2, val_fraction=0.2,
              overrides=["train.max_epochs=3", "model.dropout=0.0", "train.precision=32-true"])
    one = bench(ds, **kw, group=1)
    together = bench(ds, **kw)
    assert [f["group_size"] for f in one["methods"]["abmil"]["folds"]] == [1, 1, 1]
    assert [f["group_size"] for f in together["methods"]["abmil"]["folds"]] == [3, 3, 3]
    for a, b in zip(one["methods"]["abmil"]["folds"], together["methods"]["abmil"]["folds"]):
        for k in ("auc", "accuracy", "f1"):
            assert a[k] == pytest.approx(b[k], abs=1e-6), k
    assert fold_groups("chowder", ds, 10, {}) == [[k] for k in range(10)]  # no packed form: one at a time
    assert fold_groups("abmil", ds, 5, {}, group=2) == [[0, 1], [2, 3], [4]]

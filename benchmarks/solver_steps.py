"""Counterfactual error against network calls: DDIM and DPM-Solver++(2M) decoding at several step counts.

    python benchmarks/solver_steps.py [pendulum|morphomnist|MODEL_DIR] [--steps 10,20,30,50] [--n 64]
        [--solvers ddim,dpm++2m]

On the validation split (never test), at the model's own depth and guidance (``knobs.json``), one do() per image
(variables in turn, values drawn from the split's marginal, the same for every cell), the inversion always DDIM
with the same steps: the pixel L1 (0-255) to the rendered true counterfactual with its standard error, the
null intervention's L1 to the input (how well do={} still reconstructs), and the seconds per image of one
``counterfactual()`` call on 16 images (inversion and decoding at the model's guidance). Prints a table
and writes ``benchmarks/results/solver_steps_DATASET.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from causaldiffae import CausalDiffAE
from causaldiffae.counterfactual import counterfactual
from causaldiffae.data import BUILTIN, open_dataset
from causaldiffae.demo import SHIPPED_MODELS, dataset_of
from causaldiffae.tune import TuneSettings, tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="pendulum", help="pendulum, morphomnist or a model folder")
    parser.add_argument("--steps", default="10,20,30,50")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--solvers", default="ddim,dpm++2m", help="decoders to compare (comma-separated)")
    parser.add_argument("--json", help="output (default benchmarks/results/solver_steps_DATASET.json)")
    args = parser.parse_args()

    model = CausalDiffAE.from_pretrained(SHIPPED_MODELS.get(args.model, args.model))
    dataset = dataset_of(model)
    data = open_dataset(dataset, None, model.config.image_size, progress=False,
                        class_column=BUILTIN[dataset].class_column if model.config.num_classes else None)
    knobs = model.knobs
    timed = data.with_variables(model.graph.variables).split("val").batch(range(16))
    first = model.graph.variables[0]
    rows = []
    for steps in (int(k) for k in args.steps.split(",")):
        for solver in args.solvers.split(","):
            settings = TuneSettings(depths=(knobs.depth,), weights=(knobs.guidance,), n=args.n, steps=steps,
                                    solver=solver)
            cell = tune(model, data, settings, progress=False)["grid"][0]
            start = time.perf_counter()
            counterfactual(model, timed["image"], {first: timed["labels"][:, 0].flip(0)}, steps=steps,
                           solver=solver, classes=timed.get("class"))
            seconds = (time.perf_counter() - start) / len(timed["image"])
            row = {"solver": solver, "steps": steps, "true_cf_l1": cell["true_cf_l1"],
                   "true_cf_l1_sem": cell["true_cf_l1_sem"], "null_l1": cell["null_l1"],
                   "seconds_per_image": round(seconds, 3)}
            rows.append(row)
            print(f"{solver:>8} {steps:>3} steps: true-cf L1 {row['true_cf_l1']:.3f} ± {row['true_cf_l1_sem']:.3f}, "
                  f"null L1 {row['null_l1']:.3f}, {seconds:.3f} s/img", flush=True)
    out = Path(args.json or f"benchmarks/results/solver_steps_{dataset}.json")
    out.write_text(json.dumps({"model": args.model, "dataset": dataset, "split": "val", "n": args.n,
                               "depth": knobs.depth, "guidance": knobs.guidance, "threads": torch.get_num_threads(),
                               "machine": platform.machine(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Counterfactual error against network calls: abductions and decoders at several step counts.

    python benchmarks/solver_steps.py [pendulum|morphomnist|MODEL_DIR] [--steps 10,20,30,50] [--n 64]
        [--solvers ddim,dpm++2m] [--abductions exact,ddim] [--predictors DIR] [--precision bf16]

On the validation split (never test), at the model's own depth and guidance (``knobs.json``), one do() per image
(variables in turn, values drawn from the split's marginal, the same for every cell), the inversion always DDIM
with the same steps ("exact" also keeps the residuals of the factual decoding steps; it decodes with DDIM only):
the pixel L1 (0-255) to the rendered true counterfactual with its standard error, the null intervention's L1 to
the input (how well do={} still reconstructs), with ``--predictors`` the effectiveness (normalised absolute
error of the intervened variable as the predictors read it), on MorphoMNIST the executed share (the measured
change of the intervened variable over its intended change), and the seconds per image of one
``counterfactual()`` call on 16 images (inversion and decoding at the model's guidance), each also per do()
variable. Prints a table and writes ``benchmarks/results/solver_steps_DATASET.json``.
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
from causaldiffae.metrics.predictors import load_predictors
from causaldiffae.precision import PRECISIONS
from causaldiffae.tune import TuneSettings, tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="pendulum", help="pendulum, morphomnist or a model folder")
    parser.add_argument("--steps", default="10,20,30,50")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--solvers", default="ddim,dpm++2m", help="decoders to compare (comma-separated)")
    parser.add_argument("--abductions", default="ddim", help="abductions to compare (comma-separated: exact,ddim)")
    parser.add_argument("--predictors", help="a predictors folder: also report effectiveness")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="of the UNet (bf16: autocast)")
    parser.add_argument("--json", help="output (default benchmarks/results/solver_steps_DATASET.json)")
    args = parser.parse_args()

    model = CausalDiffAE.from_pretrained(SHIPPED_MODELS.get(args.model, args.model))
    model.precision = args.precision
    dataset = dataset_of(model)
    data = open_dataset(dataset, None, model.config.image_size, progress=False,
                        class_column=BUILTIN[dataset].class_column if model.config.num_classes else None)
    knobs = model.knobs
    timed = data.with_variables(model.graph.variables).split("val").batch(range(16))
    first = model.graph.variables[0]
    predictors = load_predictors(args.predictors) if args.predictors else None
    rows = []
    cells = [(int(k), a, s) for k in args.steps.split(",") for a in args.abductions.split(",")
             for s in args.solvers.split(",") if not (a == "exact" and s != "ddim")]
    for steps, abduction, solver in cells:
        settings = TuneSettings(depths=(knobs.depth,), weights=(knobs.guidance,), n=args.n, steps=steps,
                                solver=solver, abduction=abduction)
        cell = tune(model, data, settings, predictors, progress=False)["grid"][0]
        start = time.perf_counter()
        counterfactual(model, timed["image"], {first: timed["labels"][:, 0].flip(0)}, steps=steps,
                       solver=solver, abduction=abduction, classes=timed.get("class"))
        seconds = (time.perf_counter() - start) / len(timed["image"])
        row = {"abduction": abduction, "solver": solver, "steps": steps,
               **{k: cell[k] for k in ("true_cf_l1", "true_cf_l1_sem", "null_l1", "effectiveness",
                                       "effectiveness_sem", "measured", "measured_sem", "executed") if k in cell},
               "seconds_per_image": round(seconds, 3), "by_variable": cell["by_variable"]}
        rows.append(row)
        effect = "".join(f", {k} {row[k]:.3f}" for k in ("effectiveness", "measured", "executed") if k in row)
        print(f"{abduction:>5} {solver:>8} {steps:>3} steps: true-cf L1 {row['true_cf_l1']:.3f} ± "
              f"{row['true_cf_l1_sem']:.3f}, null L1 {row['null_l1']:.3f}{effect}, {seconds:.3f} s/img", flush=True)
        for name, means in cell["by_variable"].items():
            print(f"    do({name}): " + ", ".join(f"{k} {v:.3f}" for k, v in means.items() if k != "null_l1"))
    out = Path(args.json or f"benchmarks/results/solver_steps_{dataset}.json")
    out.write_text(json.dumps({"model": args.model, "dataset": dataset, "split": "val", "n": args.n,
                               "depth": knobs.depth, "guidance": knobs.guidance, "precision": args.precision,
                               "threads": torch.get_num_threads(), "machine": platform.machine(), "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

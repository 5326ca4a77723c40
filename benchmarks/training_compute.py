"""The training compute behind model folders: each run's images seen times the counted FLOPs of one training image.

    python benchmarks/training_compute.py src/causaldiffae/pretrained/morphomnist [MODEL ...] [--reference MODEL]
        [--json benchmarks/results/training_compute.json]

A model folder holds the config and metrics.csv of every run behind its weights (``base-``, ``finetune-N-``, then
the unprefixed run that wrote them; a plain run folder has one). Each run's images are its last logged step times
its batch size, and its FLOPs per image are counted by torch's FlopCounterMode on the model's architecture with the
run's ``train.freeze`` (a frozen UNet computes no weight gradients). With ``--reference``, each model's compute is
also given as a share of the reference's: the performance issue's "a third of the compute" is a share of 1/3 or
less.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from causaldiffae.atomic import write_text
from causaldiffae.training.flops import training_compute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model or run folders")
    parser.add_argument("--reference", help="a model folder whose compute the others are given a share of")
    parser.add_argument("--json", default="benchmarks/results/training_compute.json")
    args = parser.parse_args()
    reference = sum(s.flops for s in training_compute(args.reference)) if args.reference else None
    report: dict = {"reference": args.reference, "reference_flops": reference, "models": {}}
    for folder in args.models:
        stages = training_compute(folder)
        total = sum(s.flops for s in stages)
        share = total / reference if reference else None
        report["models"][folder] = {"stages": [s.to_dict() for s in stages], "flops": total, "share": share}
        print(folder)
        for s in stages:
            frozen = f", frozen {'+'.join(s.freeze)}" if s.freeze else ""
            print(f"  {s.name:12s} {s.steps:6d} steps x {s.batch_size:3d} = {s.images:8d} images x "
                  f"{s.flops_per_image:.3g} FLOPs{frozen} = {s.flops:.3g}")
        print(f"  total {total:.4g} FLOPs" + (f", {share:.3f} of {args.reference}" if share is not None else ""))
    write_text(Path(args.json), json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

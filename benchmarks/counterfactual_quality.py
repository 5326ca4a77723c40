"""Counterfactual quality of a Pendulum model against the true counterfactuals, printed and written as JSON.

    python benchmarks/counterfactual_quality.py [MODEL] [--n 100] [--steps 50] [--depths 1.0,0.5]

For each depth: do(angle = a), a uniform over the angle range, on n test images; the mean absolute pixel
error (on [0, 1]) of the counterfactual and of the factual image to the true counterfactual render(a, light),
how many counterfactuals beat the factual image, the null-intervention reconstruction error, the same for
do(light), and the counterfactual throughput (images/s).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from causaldiffae import CausalDiffAE
from causaldiffae.counterfactual import counterfactual
from causaldiffae.data import open_dataset, pendulum
from causaldiffae.demo import SHIPPED


def truth_of(labels: torch.Tensor, variables: list[str], do: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    images = []
    for i, row in enumerate(labels.tolist()):
        factual = dict(zip(variables, row, strict=True))
        image, _ = pendulum.true_counterfactual(factual, {k: float(v[i]) for k, v in do.items()}, size)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(SHIPPED))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--depths", default="1.0", help="comma-separated inversion depths")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/counterfactual_quality.json")
    args = parser.parse_args()

    model = CausalDiffAE.from_pretrained(args.model)
    test = open_dataset("pendulum", None, model.config.image_size, progress=False).split("test")
    g = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(test), generator=g)[: args.n]
    batch = test.batch(pick)
    x, labels, variables = batch["image"], batch["labels"], model.graph.variables
    size = model.config.image_size
    results = {"model": args.model, "n": args.n, "steps": args.steps, "threads": torch.get_num_threads(),
               "depths": {}}
    for var in ("angle", "light"):
        lo, hi = model.graph[var].range
        values = lo + torch.rand(args.n, generator=g, dtype=torch.float64) * (hi - lo)
        truth = truth_of(labels, variables, {var: values}, size)
        for depth in (float(d) for d in args.depths.split(",")):
            entry = results["depths"].setdefault(str(depth), {})
            start, outs, recons = time.perf_counter(), [], []
            for s in range(0, args.n, args.batch):
                sl = slice(s, s + args.batch)
                r = counterfactual(model, x[sl], {var: values[sl].float()}, steps=args.steps, depth=depth,
                                   reconstruct=var == "angle")
                outs.append(r.images)
                recons.append(r.reconstruction)
            seconds = time.perf_counter() - start
            cf = torch.cat(outs)
            err_cf = (cf - truth).abs().mean(dim=(1, 2, 3))
            err_fact = (x - truth).abs().mean(dim=(1, 2, 3))
            entry[var] = {"mae_counterfactual_to_truth": err_cf.mean().item(),
                          "mae_factual_to_truth": err_fact.mean().item(),
                          "closer_than_factual": int((err_cf < err_fact).sum()), "of": args.n}
            if var == "angle":
                entry["null_intervention_mae"] = (torch.cat(recons) - x).abs().mean().item()
                entry["seconds_with_reconstruction"] = round(seconds, 2)
    # throughput: counterfactual only (no reconstruction), guidance 1, 50 steps
    start = time.perf_counter()
    counterfactual(model, x[: args.batch], {"angle": 10.0}, steps=args.steps)
    results["counterfactual_img_per_s"] = round(min(args.batch, args.n) / (time.perf_counter() - start), 2)
    print(json.dumps(results, indent=2))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Counterfactual speed on the CPU with contiguous against channels_last weights (same outputs).

    python benchmarks/cpu_memory_format.py [MODEL] [--n 50] [--steps 50]

Why from_pretrained puts a CPU model in channels_last: prints and writes both timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from causaldiffae import CausalDiffAE
from causaldiffae.counterfactual import counterfactual
from causaldiffae.demo import SHIPPED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(SHIPPED))
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", default="benchmarks/results/cpu_memory_format.json")
    args = parser.parse_args()
    model = CausalDiffAE.from_pretrained(args.model)
    x = torch.rand(args.n, model.config.channels, model.config.image_size, model.config.image_size,
                   generator=torch.Generator().manual_seed(0))
    results: dict = {"n": args.n, "steps": args.steps, "threads": torch.get_num_threads()}
    outputs = {}
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        model = model.to(memory_format=fmt)
        counterfactual(model, x[:2], {"angle": 10.0}, steps=2)  # warm-up
        start = time.perf_counter()
        outputs[name] = counterfactual(model, x, {"angle": 10.0}, steps=args.steps).images
        seconds = time.perf_counter() - start
        results[name] = {"seconds": round(seconds, 2), "img_per_s": round(args.n / seconds, 2)}
    results["max_abs_difference"] = (outputs["contiguous"] - outputs["channels_last"]).abs().max().item()
    print(json.dumps(results, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

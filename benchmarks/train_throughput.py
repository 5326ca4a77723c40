"""Training throughput (img/s) and peak memory of a run config, printed and written as JSON.

    python benchmarks/train_throughput.py configs/pendulum.yaml [--set key=value ...] [--steps 30]

Times full optimiser steps (forward, backward, AdamW) on real batches of the config's dataset, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from causaldiffae.data import open_dataset
from causaldiffae.model import CausalDiffAE, count_parameters
from causaldiffae.training import load_run_config
from causaldiffae.training.loop import resolve_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="benchmarks/results/train_throughput.json", help="output JSON")
    args = parser.parse_args()

    config = load_run_config(args.config, args.set)
    data = open_dataset(config.data.name, config.data.root, config.data.image_size, config.data.resize)
    graph = resolve_graph(config.graph, data)
    torch.manual_seed(0)
    model = CausalDiffAE(config.model_config(graph.to_dict(), data.image_size, data.channels)).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    train = data.split("train")
    batch_size = config.train.batch_size

    def one_step(i: int) -> None:
        index = torch.arange(i * batch_size, (i + 1) * batch_size) % len(train)
        loss = model.loss(train.batch(index, args.device))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        one_step(i)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.steps):
        one_step(i)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "config": args.config, "overrides": args.set, "device": args.device, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "image_size": data.image_size, "batch_size": batch_size, "parameters": count_parameters(model),
        "steps": args.steps, "seconds": round(seconds, 3),
        "steps_per_s": round(args.steps / seconds, 3), "img_per_s": round(args.steps * batch_size / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result, indent=2))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

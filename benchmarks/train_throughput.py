"""Training throughput (img/s) and peak memory of a run config, printed and written as JSON.

    python benchmarks/train_throughput.py configs/pendulum.yaml [--set key=value ...] [--steps 30]
        [--variants eager,channels_last,compile,channels_last+compile]

Times full optimiser steps (forward, backward, AdamW) on real batches of the config's dataset, after warm-up.
With ``--variants``, the same steps run once per way of executing the model, in one process and from the same
initial weights, batches and noise (a variant's step i draws its noise after ``torch.manual_seed(i)``): each
variant's img/s, its speed-up over the first, and the largest difference of its per-step losses from the
first's, so a faster variant that changes the loss curve shows it. ``compile`` wraps the UNet (where the FLOPs
are) in ``torch.compile``; its compilation happens in the untimed warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

from causaldiffae.data import open_dataset
from causaldiffae.data.base import ImageDataset
from causaldiffae.model import CausalDiffAE, count_parameters
from causaldiffae.training import load_run_config
from causaldiffae.training.loop import resolve_graph

VARIANTS = ("eager", "channels_last", "compile", "channels_last+compile", "bf16")


def _prepare(model: CausalDiffAE, variant: str) -> CausalDiffAE:
    """The model as ``variant`` runs it: memory format and compilation (bf16 is an autocast at step time)."""
    if "channels_last" in variant.split("+"):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if "compile" in variant.split("+"):
        model.unet.compile()  # as train.compile does: in place, the weights keep their names
    return model


def _step_function(model: CausalDiffAE, optimizer: torch.optim.Optimizer, autocast: torch.autocast,
                   train: ImageDataset, batch_size: int, device: str) -> Callable[[int], float]:
    """One optimiser step on batch i, its noise drawn after seeding with i; returns the loss."""

    def one_step(i: int) -> float:
        torch.manual_seed(i)
        index = torch.arange(i * batch_size, (i + 1) * batch_size) % len(train)
        with autocast:
            loss = model.loss(train.batch(index, device))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return one_step


def _timed(step: Callable[[int], float], warmup: int, steps: int, cuda: bool) -> tuple[float, list[float]]:
    """Seconds for ``steps`` steps after ``warmup`` untimed ones, and the timed steps' losses."""
    for i in range(warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [step(warmup + i) for i in range(steps)]
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default="eager",
                        help=f"comma-separated, timed side by side, the first is the reference: {', '.join(VARIANTS)}")
    parser.add_argument("--json", default="benchmarks/results/train_throughput.json", help="output JSON")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    config = load_run_config(args.config, args.set)
    data = open_dataset(config.data.name, config.data.root, config.data.image_size, config.data.resize)
    graph = resolve_graph(config.graph, data)
    model_config = config.model_config(graph.to_dict(), data.image_size, data.channels)
    train = data.split("train")
    batch_size = config.train.batch_size
    cuda = args.device.startswith("cuda")
    rows = {}
    for variant in variants:
        torch.manual_seed(0)
        model = _prepare(CausalDiffAE(model_config).to(args.device), variant)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
        autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=variant == "bf16")

        one_step = _step_function(model, optimizer, autocast, train, batch_size, args.device)
        seconds, losses = _timed(one_step, args.warmup, args.steps, cuda)
        rows[variant] = {"seconds": round(seconds, 3), "steps_per_s": round(args.steps / seconds, 3),
                         "img_per_s": round(args.steps * batch_size / seconds, 1), "losses": losses}
        if cuda:
            rows[variant]["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        print(f"{variant:>22}: {rows[variant]['img_per_s']} img/s", flush=True)
    first = rows[variants[0]]
    for row in rows.values():
        row["speedup"] = round(row["img_per_s"] / first["img_per_s"], 3)
        row["max_loss_difference"] = max(abs(a - b) for a, b in zip(row["losses"], first["losses"], strict=True))
    result = {
        "config": args.config, "overrides": args.set, "device": args.device, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "image_size": data.image_size, "batch_size": batch_size, "parameters": count_parameters(model),
        "steps": args.steps, "warmup": args.warmup, **rows[variants[0]],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if len(variants) > 1:
        result["variants"] = rows
    print(json.dumps({k: v for k, v in result.items() if k not in ("losses", "variants")}, indent=2))
    for name, row in rows.items():
        print(f"{name:>22}: {row['img_per_s']:7.1f} img/s  x{row['speedup']:.2f}  "
              f"max |loss - {variants[0]}'s| {row['max_loss_difference']:.2e}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Throughput against the machine's own ceiling: training, counterfactuals and sampling, fp32 and bf16.

    python benchmarks/utilisation.py [--train-steps 10] [--images 16] [--reference-images 1] [--skip-reference]

In one process, one after another:
1. the machine's matmul rates (2048 x 2048 x 2048, fp32 and bf16): the ceilings (where bf16 runs slower than
   fp32, a CPU without bf16 instructions, bf16 is measured on one training step only);
2. training steps of the default Pendulum config (forward, backward, AdamW; batch 32), fp32 and bf16 autocast;
3. a default counterfactual of the shipped Pendulum model (its knobs: depth, guidance and DDIM steps; the exact
   abduction with DDIM decoding, and plain DDIM inversion with DPM-Solver++ decoding) and samples from noise
   (50 steps), fp32 and bf16 autocast;
4. cost against image size and batch size (``--skip-scaling`` leaves it out): training steps of the default
   Pendulum architecture at 32, 64 and 96 px and at batch 8, 32 and 128, counterfactuals at 32, 64 and 96 px;
5. the same model built at the reference code's MorphoMNIST size (128 channels, 3 res blocks, attention at full
   resolution; 35 M parameters, random weights: only the cost is measured) with the reference's counterfactual:
   fresh noise at t = 999 and 250 DDIM steps, without and with guidance, and our default counterfactual (the
   shipped MorphoMNIST model's knobs) on the same model; printed as the ratio of their times per image.
For each: images per second, GFLOP per image counted by torch's FLOP counter (matmuls, convolutions and
attention; elementwise work is not counted), the GFLOP/s this achieves and its fraction of the matching matmul
ceiling, and the process's peak memory so far. Prints a table and writes ``benchmarks/results/utilisation.json``.
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
from torch.utils.flop_counter import FlopCounterMode

from causaldiffae import CausalDiffAE
from causaldiffae.counterfactual import counterfactual, sample
from causaldiffae.data import open_dataset
from causaldiffae.demo import SHIPPED_MODELS
from causaldiffae.graph import CausalGraph
from causaldiffae.model import ModelConfig, count_parameters
from causaldiffae.precision import autocast
from causaldiffae.training import RunConfig, load_run_config
from causaldiffae.training.loop import resolve_graph

REFERENCE_SIZE = dict(unet_channels=128, num_res_blocks=3, attention_levels=(0,), channel_mult=(1, 2, 2))


def matmul_rate(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of n x n x n matmuls in ``dtype`` (2 n^3 FLOP each), best of repeated timing windows."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def measure(name: str, fn: Callable[[], object], images: int, repeats: int, bf16: bool, ceilings: dict) -> dict:
    """Run ``fn`` once under the FLOP counter, then ``repeats`` times timed; ``images`` per call."""
    with autocast("bf16" if bf16 else "fp32", "cpu"):
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        seconds = (time.perf_counter() - start) / repeats
    gflop = counter.get_total_flops() / 1e9 / images
    img_s = images / seconds
    # emulated bf16 (a matmul rate below fp32's) has no ceiling to speak of: autocast keeps part of the work in fp32
    emulated = bf16 and ceilings["bf16"] < ceilings["fp32"]
    fraction = None if emulated else round(gflop * img_s / ceilings["bf16" if bf16 else "fp32"], 3)
    row = {"name": name, "precision": "bf16" if bf16 else "fp32", "img_per_s": round(img_s, 3),
           "gflop_per_image": round(gflop, 3), "gflop_per_s": round(gflop * img_s, 1),
           "fraction_of_matmul_ceiling": fraction,
           "peak_rss_mb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    share = "no ceiling (bf16 emulated)" if fraction is None else f"{fraction:.0%} of the matmul rate"
    print(f"{name:<44} {row['precision']:>4}: {img_s:8.3f} img/s, {gflop:8.3f} GFLOP/img, "
          f"{row['gflop_per_s']:7.1f} GFLOP/s = {share}, peak RSS {row['peak_rss_mb_so_far']:.0f} MB", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=16, help="images per counterfactual or sampling call")
    parser.add_argument("--reference-images", type=int, default=1)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true", help="leave out cost against image and batch size")
    parser.add_argument("--json", default="benchmarks/results/utilisation.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    ceilings = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    print(f"matmul ceilings: fp32 {ceilings['fp32']:.1f} GFLOP/s, bf16 {ceilings['bf16']:.2f} GFLOP/s", flush=True)
    # a CPU without bf16 instructions (AVX-512 BF16, AMX) emulates them, far slower than fp32: measured once in
    # training, the rest would take hours
    bf16_worth = ceilings["bf16"] >= ceilings["fp32"]
    rows = []

    config = load_run_config("configs/pendulum.yaml", [])
    data = open_dataset(config.data.name, config.data.root, config.data.image_size, config.data.resize,
                        progress=False)
    graph = resolve_graph(config.graph, data)
    trainee = CausalDiffAE(config.model_config(graph.to_dict(), data.image_size, data.channels))
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=config.train.lr)
    batch = data.split("train").batch(torch.arange(config.train.batch_size))

    def train_step() -> None:
        trainee.loss(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for bf16 in (False, True):
        train_step()  # warm-up
        rows.append(measure("train step, default Pendulum config", train_step, config.train.batch_size,
                            args.train_steps if not bf16 or bf16_worth else 1, bf16, ceilings))

    model = CausalDiffAE.from_pretrained(SHIPPED_MODELS["pendulum"])
    test = data.split("test").batch(torch.arange(args.images))
    do = {"angle": test["labels"][:, 0].flip(0)}
    for bf16 in (False, True) if bf16_worth else (False,):
        for abduction, solver in (("exact", "ddim"), ("ddim", "dpm++2m")):
            rows.append(measure(f"counterfactual, shipped Pendulum, {abduction} abduction, {solver}",
                                lambda a=abduction, s=solver: counterfactual(model, test["image"], do, abduction=a,
                                                                             solver=s),
                                args.images, 1, bf16, ceilings))
        rows.append(measure("sample from noise, shipped Pendulum", lambda: sample(model, {}, args.images, steps=50),
                            args.images, 1, bf16, ceilings))

    if not args.skip_reference:
        shipped_mm = CausalDiffAE.from_pretrained(SHIPPED_MODELS["morphomnist"])
        big = CausalDiffAE(ModelConfig(**{**shipped_mm.config.__dict__, **REFERENCE_SIZE})).eval()
        ours = shipped_mm.knobs
        print(f"reference-size model: {count_parameters(big.unet) / 1e6:.1f} M UNet parameters", flush=True)
        x = torch.rand(args.reference_images, 1, 28, 28)
        classes = torch.zeros(args.reference_images, dtype=torch.long)
        cf = {"thickness": 4.0}
        for name, kwargs in (("reference: fresh noise, 250 steps, w = 1", dict(steps=250, depth=1.0, guidance=1.0,
                                                                              abduction="noise")),
                             ("reference: fresh noise, 250 steps, w = 2", dict(steps=250, depth=1.0, guidance=2.0,
                                                                              abduction="noise")),
                             ("ours on the reference-size model", dict(steps=ours.steps, depth=ours.depth,
                                                                       guidance=ours.guidance))):
            rows.append(measure(name, lambda k=kwargs: counterfactual(big, x, cf, classes=classes, **k),
                                args.reference_images, 1, False, ceilings))
        for reference in rows[-3:-1]:
            print(f"ours ({ours.steps} steps, depth {ours.depth}, w {ours.guidance:g}) takes "
                  f"{reference['img_per_s'] / rows[-1]['img_per_s']:.3f} of the time of '{reference['name']}'")

    if not args.skip_scaling:
        rows += scaling(config, graph, data.channels, batch["labels"], ceilings)

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__,
                               "machine": platform.machine(), "processor": platform.processor(),
                               "matmul_gflop_per_s": {k: round(v, 2) for k, v in ceilings.items()},
                               "bf16_measured_beyond_training": bf16_worth, "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")


def scaling(config: RunConfig, graph: CausalGraph, channels: int, labels: torch.Tensor, ceilings: dict) -> list[dict]:
    """How cost grows: a training step of the default Pendulum architecture at 32, 64 and 96 px (batch 32) and at
    batch 8, 32 and 128 (32 px), and a counterfactual (the shipped Pendulum knobs) at 32, 64 and 96 px (8 images).
    Random weights and images: only the cost is measured."""
    rows = []
    knobs = CausalDiffAE.from_pretrained(SHIPPED_MODELS["pendulum"]).knobs
    for size, batch_size in ((32, 8), (32, 32), (32, 128), (64, 32), (96, 32)):
        torch.manual_seed(0)
        model = CausalDiffAE(config.model_config(graph.to_dict(), size, channels))
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
        batch = {"image": torch.rand(batch_size, channels, size, size), "labels": labels[:1].repeat(batch_size, 1)}

        def step(m: CausalDiffAE = model, o: torch.optim.Optimizer = optimizer, b: dict = batch) -> None:
            m.loss(b)["loss"].backward()
            o.step()
            o.zero_grad(set_to_none=True)

        step()  # warm-up
        rows.append(measure(f"train step, {size} px, batch {batch_size}", step, batch_size, 3, False, ceilings))
        if batch_size == 32:
            x = torch.rand(8, channels, size, size)
            model.eval().knobs = knobs
            rows.append(measure(f"counterfactual, {size} px, {knobs.steps} steps",
                                lambda m=model, x=x: counterfactual(m, x, {"angle": 10.0}), 8, 1, False, ceilings))
    return rows


if __name__ == "__main__":
    main()

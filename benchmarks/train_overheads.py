"""Where a training run's seconds go that are not the network: data, EMA, logging, grids, checkpoints, exports.

    python benchmarks/train_overheads.py configs/pendulum.yaml [--set key=value ...] [--steps 500] [--out DIR]

Runs ``causaldiffae train`` on the config for ``--steps`` steps (a fresh run folder, the config's own
``log_every``, ``sample_every`` and ``checkpoint_every``, so with ``--steps`` a multiple of them the shares are
those of a whole run) under cProfile, and splits its wall time by the functions of the loop that do each job:
the batch (``ImageDataset.batch``), the EMA update, the metrics row, the sample grids, the checkpoints, the
exported model, the set-up (data and label mechanisms) and the rest, which is the network's forward, backward and
optimiser step. Shares of one process's time, so they hold on a busy machine too; seconds do not. Writes
``benchmarks/results/train_overheads_DATASET.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import tempfile
import time
from pathlib import Path

import torch

from causaldiffae.training import load_run_config, train

#: (job, module path suffix, function name): cumulative time of these functions is the job's time
JOBS = (
    ("set-up: data and label mechanisms", "training/loop.py", "_prepare_data"),
    ("set-up: data and label mechanisms", "causaldiffae/model.py", "fit_mechanisms"),
    ("batch (data)", "data/base.py", "batch"),
    ("EMA update", "training/loop.py", "_update_ema"),
    ("metrics.csv row", "training/loop.py", "_append_metrics"),
    ("sample grids", "training/loop.py", "write_grids"),
    ("checkpoints", "training/checkpoint.py", "save"),
    ("exported model", "causaldiffae/model.py", "save_pretrained"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", help="output JSON (default benchmarks/results/train_overheads_DATASET.json)")
    args = parser.parse_args()

    config = load_run_config(args.config, [*args.set, f"train.max_steps={args.steps}"])
    profile = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        begin = time.perf_counter()
        profile.runcall(train, config, Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - begin
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    seconds: dict[str, float] = {}
    for job, suffix, name in JOBS:
        cumulative = sum(entry[3] for (file, _, func), entry in stats.items()
                         if func == name and file.replace("\\", "/").endswith(suffix))
        seconds[job] = seconds.get(job, 0.0) + cumulative
    seconds["network: forward, backward, optimiser (the rest)"] = wall - sum(seconds.values())
    result = {"config": args.config, "overrides": args.set, "steps": args.steps, "wall_s": wall,
              "batch_size": config.train.batch_size, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(),
              "seconds": seconds, "share": {k: v / wall for k, v in seconds.items()}}
    for job, s in seconds.items():
        print(f"{job:52s} {s:8.1f} s  {s / wall:6.1%}")
    out = Path(args.out or f"benchmarks/results/train_overheads_{config.data.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

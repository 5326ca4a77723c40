"""The training loop: accelerate (CPU, GPUs, several processes), AdamW, EMA, progress, grids, checkpoints.

Resuming gives the same next loss as an uninterrupted run: the data order is a function of (seed, epoch),
all noise of a step is drawn after seeding with (seed, step, process), and the learning rate is a function
of the step, so model, EMA and optimiser state are all a checkpoint needs.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from PIL import Image
from tqdm.auto import tqdm

from .. import tracking
from ..atomic import naming, write_text
from ..counterfactual import abduct_noise, decode
from ..data import open_dataset
from ..data.base import ImageDataset, hide_labels
from ..diffusion import ddim
from ..graph import CausalGraph
from ..images import save_grid
from ..model import CausalDiffAE, ModelConfig
from ..precision import training_precision
from . import checkpoint, run_folder
from .config import RunConfig
from .run_folder import MECHANISMS_LOG

METRICS = ("step", "loss", "mse", "kl", "label", "gamma", "lr", "img_per_s", "elapsed_s")


def train(config: RunConfig, out: str | Path, resume: bool = False, progress: bool = True, *,
          overwrite: bool = False, allow_config_change: bool = False) -> Path:
    """Train a CausalDiffAE into ``out`` and return the folder; ``from_pretrained(out)`` loads the EMA model.

    ``out`` must be new or empty, unless ``resume`` (continue from its newest intact checkpoint, with the run's
    config but for its budget and logging, unless ``allow_config_change``) or ``overwrite`` (replace the files
    of an earlier run there). The folder is locked while the run trains (see run_folder). ``train.log_with``'s
    trackers get every metrics.csv row and the grids too, their files under ``out/logs/train``."""
    run, tc = Path(out), config.train
    trackers = tracking.names(tc.log_with, "train.log_with")
    tracking.check_installed(trackers, "train.log_with")  # before any work: accelerate would skip it silently
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite starts a new one: pass one of them")
    if allow_config_change and not resume:
        raise ValueError("--allow-config-change goes with --resume (a new run takes any config)")
    # cpu=True also on machines without a GPU: that is how accelerate runs several CPU processes (torchrun)
    on_cpu = tc.cpu or not torch.cuda.is_available()
    precision = training_precision(tc.mixed_precision, not on_cpu)
    accelerator = Accelerator(mixed_precision=precision, cpu=on_cpu, **tracking.accelerator_options(trackers, run))
    main = accelerator.is_main_process
    if main and tc.mixed_precision == "auto":
        where = "CPU" if on_cpu else "GPU"
        print(f"causaldiffae: mixed precision auto: {precision} (bf16 is {'' if precision == 'bf16' else 'not '}"
              f"native on this {where})", file=sys.stderr)
    # the signal handler outlives the lock: a signal at any moment of the run leaves no stale train.lock behind
    with _GracefulStop(enabled=accelerator.num_processes == 1) as stop, run_folder.lock(run, _warn, enabled=main):
        with accelerator.main_process_first():
            if main:
                run_folder.prepare(run, resume, overwrite, _warn)
            graph, model_config, train_set, grid_set, val_labels = _prepare_data(config)
        resolved = {**config.to_dict(), "graph": graph.to_dict()}
        if resume:
            run_folder.check_config(run, resolved, allow_config_change)
        _train(accelerator, run, config, resolved, model_config, train_set, grid_set, val_labels, resume, progress,
               stop)
    return run


def _train(accelerator: Accelerator, run: Path, config: RunConfig, resolved: dict, model_config: ModelConfig,
           train_set: ImageDataset, grid_set: ImageDataset, val_labels: torch.Tensor | None, resume: bool,
           progress: bool, stop: _GracefulStop) -> None:
    tc = config.train
    torch.manual_seed(tc.seed)
    model = CausalDiffAE(model_config)
    if not resume:  # the label mechanisms need only the labels: fit once, before the first step (resume loads them)
        if tc.init_from:  # before the fit, which then replaces the folder's mechanisms with this run's
            checkpoint.initialise(model, tc.init_from)
            if accelerator.is_main_process:
                print(f"causaldiffae: initialised from {tc.init_from} (fine-tuning; that model's own training is "
                      f"not in this run's metrics.csv)", file=sys.stderr)
        fits = model.fit_mechanisms(train_set.labels, val_labels, steps=tc.mechanism_steps, seed=tc.seed,
                                    progress=progress and accelerator.is_local_main_process)
        if accelerator.is_main_process and fits:
            for fit in fits:
                print(f"causaldiffae: mechanism {fit.line()}", file=sys.stderr)
            write_text(run / MECHANISMS_LOG, json.dumps([fit.to_dict() for fit in fits], indent=1) + "\n")
    model.causal_layer.labels.requires_grad_(False)  # fixed from here: no optimiser step or weight decay moves them
    model.freeze(tc.freeze)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=tc.lr, weight_decay=tc.weight_decay)
    step = 0
    if resume:
        step = checkpoint.resume(run, model, ema, optimizer, _warn if accelerator.is_main_process else None,
                                 accelerator.scaler)
    saved = step if resume else None  # the step of the newest checkpoint this run can rely on
    exported = None  # the step of the model this process last exported
    if accelerator.is_main_process:
        write_text(run / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        _truncate_metrics(run / "metrics.csv", step)
    # as metrics.csv drops its rows after the checkpoint, TensorBoard hides what was logged after it
    tracking.start(accelerator, "train", resolved, purge_from=step + 1 if resume else None)
    if tc.compile:  # in place, so the weights keep their names in checkpoints and the exported model
        model.unet.compile()
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)

    world, rank = accelerator.num_processes, accelerator.process_index
    images_per_step = tc.batch_size * world
    bar = tqdm(total=tc.max_steps * images_per_step, initial=step * images_per_step, unit="img",
               disable=not (progress and accelerator.is_local_main_process), dynamic_ncols=True)
    start, last_log, last_step = time.monotonic(), time.monotonic(), step
    stop.phase = "train"
    while step < tc.max_steps:
        if stop.requested or (tc.max_minutes is not None and time.monotonic() - start > 60 * tc.max_minutes):
            break
        torch.manual_seed(_step_seed(tc.seed, step, rank))
        indices = _batch_indices(len(train_set), tc.batch_size, world, rank, step, tc.seed)
        gamma = tc.gamma_max * min(1.0, step / tc.gamma_warmup_steps) if tc.gamma_warmup_steps else tc.gamma_max
        for group in optimizer.param_groups:
            group["lr"] = tc.learning_rate(step)
        with accelerator.autocast():
            terms = model(train_set.batch(indices, accelerator.device), gamma=gamma)
        accelerator.backward(terms["loss"])
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(trained, tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _update_ema(ema, accelerator.unwrap_model(model), tc.ema_decay, step)
        step += 1
        bar.update(images_per_step)

        if step % tc.log_every == 0 or step == tc.max_steps:
            means = {k: accelerator.reduce(v.detach(), "mean").item() for k, v in terms.items()}
            now = time.monotonic()
            rate = (step - last_step) * images_per_step / max(now - last_log, 1e-9)
            last_log, last_step = now, step
            if not all(math.isfinite(v) for v in means.values()):
                raise FloatingPointError(f"non-finite loss at step {step}: {means}; lower train.lr")
            bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()} | {"step": step})
            if accelerator.is_main_process:
                row = _append_metrics(run / "metrics.csv", [step, *means.values(), gamma,
                                                            optimizer.param_groups[0]["lr"], rate, now - start])
                accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)
        if accelerator.is_main_process and tc.sample_every and step % tc.sample_every == 0:
            _write_and_log_grids(accelerator, ema, grid_set, run, step, tc.grid_steps, tc.seed)
        if accelerator.is_main_process and tc.checkpoint_every and step % tc.checkpoint_every == 0:
            checkpoint.save(run, step, accelerator.unwrap_model(model), ema, optimizer, tc.keep_checkpoints,
                            accelerator.scaler)
            saved = step
            ema.save_pretrained(run)  # the run folder loads with from_pretrained while it trains
            exported = step
    bar.close()
    stop.phase = "save"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            if saved != step:
                checkpoint.save(run, step, accelerator.unwrap_model(model), ema, optimizer, tc.keep_checkpoints,
                                accelerator.scaler)
                saved = step
            if exported != step:  # also when a resume had no step left: the run's last export may have failed
                ema.save_pretrained(run)
        except KeyboardInterrupt:  # a second signal: the atomic writes leave the last complete checkpoint
            resumes = f"resumes from its checkpoint of step {saved} (--resume)" if saved is not None else \
                "has no checkpoint to resume from: start it again"
            print(f"causaldiffae: the final save was interrupted; {run} {resumes}", file=sys.stderr)
            raise
        if not (run / "samples" / f"step-{step:08d}-samples.png").exists():
            _write_and_log_grids(accelerator, ema, grid_set, run, step, tc.grid_steps, tc.seed)
    accelerator.end_training()


def _warn(message: str) -> None:
    print(f"causaldiffae: warning: {message}", file=sys.stderr)


class _GracefulStop:
    """SIGINT/SIGTERM handling of a run, from before it takes the lock until after it releases it.

    While the run prepares (phase ``setup``) a signal interrupts at once; while it trains (``train``) the first
    one ends training after the current step, which then saves its checkpoint, model and grids as a finished run
    does; during the final save (``save``) the first one lets the save finish. A second signal interrupts at once.
    Interrupting raises KeyboardInterrupt, so that atomic writes drop their temporary files and the lock goes.
    One process only: several processes would stop at different steps and wait for each other, so they keep the
    default (resume from the last checkpoint)."""

    _MESSAGES = {"train": "saving a checkpoint after this step", "save": "finishing the final save first"}

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self.phase = "setup"
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def __enter__(self) -> _GracefulStop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.requested or self.phase not in self._MESSAGES:
            self.restore()  # a further signal acts as without this handler
            print(f"\ncausaldiffae: {name}: stopping now", file=sys.stderr)
            raise KeyboardInterrupt
        self.requested = True
        print(f"\ncausaldiffae: {name}: {self._MESSAGES[self.phase]} (again to stop at once)", file=sys.stderr)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _prepare_data(config: RunConfig) -> tuple[CausalGraph, ModelConfig, ImageDataset, ImageDataset,
                                               torch.Tensor | None]:
    """Open (or generate) the dataset and check everything that could fail later: the run's graph, model
    config, training split, grid images and the validation labels that score the mechanisms (None without a val
    split)."""
    data, tc = config.data, config.train
    dataset = open_dataset(data.name, data.root, data.image_size, data.resize, class_column=data.class_column,
                           renderings=data.renderings)
    if "train" not in dataset.splits:
        present = ", ".join(sorted(set(dataset.splits)))
        raise ValueError(f"dataset {dataset.root} has no train split (only {present}), so there is nothing to "
                         "train on; a converted test set alone (e.g. Morpho-MNIST's t10k files) serves to "
                         "evaluate a model trained on another dataset folder")
    if data.label_fraction != 1.0:  # before resolve_graph: a normalisation computed from train labels sees only these
        dataset = hide_labels(dataset, data.label_fraction, tc.seed)
    graph = resolve_graph(config.graph, dataset)
    model_config = config.model_config(graph.to_dict(), dataset.image_size, dataset.channels)
    _check_classes(dataset, model_config.num_classes, data.class_column)
    try:
        ddim.timesteps(model_config.num_timesteps, tc.grid_steps)
    except ValueError as err:
        raise ValueError(f"train.grid_steps={tc.grid_steps} does not fit model.num_timesteps: {err}") from None
    shown = _grid_split(dataset)
    grid_set = shown.subset(torch.linspace(0, len(shown) - 1, min(tc.grid_images, len(shown))).round().long())
    val_labels = dataset.split("val").labels if "val" in dataset.splits else None
    return graph, model_config, dataset.split("train"), grid_set, val_labels


def resolve_graph(spec: str | dict | None, dataset: ImageDataset) -> CausalGraph:
    """The run's graph (the dataset's own by default), with any missing normalisation computed as the
    mean/std of the training split's labels, so that every variable maps to about [-1, 1]."""
    if spec is None:
        graph = dataset.graph
    elif isinstance(spec, dict):
        graph = CausalGraph.from_dict(spec)
    else:
        graph = CausalGraph.from_yaml(spec)
    if graph.variables != dataset.graph.variables:
        raise ValueError(f"the graph's variables {graph.variables} differ from the dataset's "
                         f"{dataset.graph.variables} (order matters: it is the order of the label columns)")
    labels = dataset.split("train").labels
    norms = {}
    for i, var in enumerate(graph.nodes):
        if var.normalization is None:
            column = labels[:, i][~torch.isnan(labels[:, i])]
            if column.numel() < 2:
                raise ValueError(f"variable {var.name!r} has no normalization and fewer than 2 training labels")
            norms[var.name] = {"mean": column.mean().item(), "std": max(column.std().item(), 1e-6)}
    return graph.with_normalization(norms) if norms else graph


def _write_and_log_grids(accelerator: Accelerator, model: CausalDiffAE, images: ImageDataset, run: Path, step: int,
                         steps: int, seed: int) -> None:
    """The grids of ``step`` into RUN/samples, and the same pictures to the trackers as ``grids/{kind}``."""
    paths = write_grids(model, images, run / "samples", step, steps, seed)
    if accelerator.trackers:
        tracking.log_images(accelerator, {f"grids/{kind}": np.asarray(Image.open(path).convert("RGB"))
                                          for kind, path in paths.items()}, step)


@torch.inference_mode()
def write_grids(model: CausalDiffAE, images: ImageDataset, folder: Path, step: int, steps: int,
                seed: int) -> dict[str, Path]:
    """Reconstruction grid (originals over DDIM invert -> decode) and sample grid (their z with fresh x_T); returns
    the path of each by kind (reconstruction, samples)."""
    batch = images.batch(range(len(images)), next(model.parameters()).device)
    x0, classes = batch["image"], batch.get("class")
    z = model.encode(x0, labels=batch["labels"]).z
    x_T = abduct_noise(model, x0, z, steps=steps, depth=1.0, abduction="ddim", classes=classes)  # not "exact",
    # whose reconstruction is the input by construction: the plain inversion shows how well the model decodes
    recon = decode(model, x_T, z, steps=steps, guidance=1.0, depth=1.0, classes=classes)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0)
    samples = decode(model, noise, z, steps=steps, guidance=1.0, depth=1.0, classes=classes, clip=True,
                     spacing="trailing")
    paths = {kind: folder / f"step-{step:08d}-{kind}.png" for kind in ("reconstruction", "samples")}
    save_grid(paths["reconstruction"], [x0, recon], ["data", "recon"])
    save_grid(paths["samples"], [x0, samples], ["data", "sample"])
    return paths


def _check_classes(dataset: ImageDataset, num_classes: int, column: str | None) -> None:
    """data.class_column and model.num_classes go together, and every class must be below num_classes."""
    if (column is None) != (num_classes == 0):
        raise ValueError("data.class_column and model.num_classes go together: set both (e.g. digit and 10) "
                         f"or neither; got {column!r} and {num_classes}")
    if dataset.classes is not None and int(dataset.classes.max()) >= num_classes:
        raise ValueError(f"class column {column!r} holds {int(dataset.classes.max())}, but model.num_classes is "
                         f"{num_classes}")


def _grid_split(dataset: ImageDataset) -> ImageDataset:
    for name in ("test", "val", "train"):
        if name in dataset.splits:
            return dataset.split(name)
    raise ValueError(f"dataset {dataset.root} has no rows")


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 8_191 + rank) % (2**63)


def _batch_indices(n: int, batch: int, world: int, rank: int, step: int, seed: int) -> torch.Tensor:
    """This process's share of the global batch of ``step``; epochs are seeded permutations of the data."""
    per_epoch = max(1, n // (batch * world))
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    begin = position * batch * world + rank * batch
    return order[torch.arange(begin, begin + batch) % n]


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """Exponential moving average with the usual warm-up so early EMA weights are not stuck at init."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - d)


def _append_metrics(path: Path, row: list[float]) -> dict[str, float]:
    """Append one row (the METRICS columns) to metrics.csv; returns it as stored (6 significant digits), which
    is what the trackers get, so that they show the very numbers of the file."""
    stored = {"step": int(row[0]), **{k: float(f"{v:.6g}") for k, v in zip(METRICS[1:], row[1:], strict=True)}}
    new = not path.exists()
    with naming(path), path.open("a", newline="") as fh:  # a full disk names metrics.csv
        writer = csv.writer(fh)
        if new:
            writer.writerow(METRICS)
        writer.writerow([stored["step"], *(f"{v:.6g}" for v in list(stored.values())[1:])])
    return stored


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume drop the rows logged after the checkpoint, so metrics.csv reads as one uninterrupted run."""
    if not path.exists():
        return
    rows = list(csv.reader(path.open(newline="")))
    kept = [rows[0], *(r for r in rows[1:] if r and int(r[0]) <= step)]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(kept)
    write_text(path, buffer.getvalue())

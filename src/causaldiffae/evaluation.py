"""Evaluate a saved model end to end: load it and the predictors, run the suite, write the report folder."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from .data.base import ImageDataset
from .images import save_grid
from .metrics.mechanisms import check_mechanisms
from .metrics.predictors import load_predictors
from .metrics.report import metrics_document, write_report
from .metrics.settings import Settings
from .metrics.suite import evaluate
from .model import CausalDiffAE


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def portable(path: str | Path) -> str:
    """A path for a committed report: relative to the working directory when under it, ``~`` for the home
    folder, else relative to the working directory (``../shared/...``), so a report names no machine's absolute
    paths."""
    path = Path(path).resolve()
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        if path.is_relative_to(base):
            return prefix + str(path.relative_to(base))
    return os.path.relpath(path)


def evaluate_run(run: str | Path, dataset: ImageDataset, predictors: str | Path, out: str | Path,
                 settings: Settings | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Evaluate the model in ``run`` (any folder ``from_pretrained`` loads) on ``dataset``'s test split and write
    ``out``/{metrics.json, report.md, guidance-sweep.png, examples-do-*.png}; returns the report path."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = CausalDiffAE.from_pretrained(run, device=dev)
    judges = load_predictors(predictors, device=str(dev))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or Settings()
    if model.config.num_classes and dataset.classes is None:
        raise ValueError("this model has a class condition: load the dataset with its class column")

    def examples(name: str, rows: list[torch.Tensor], labels: list[str], columns: list[str]) -> None:
        save_grid(out / f"{name}.png", rows, labels, columns)

    start = time.perf_counter()
    results = evaluate(model, dataset, judges, settings, progress, examples)
    mechanisms = check_mechanisms(model, dataset, n=settings.n, seed=settings.seeds[0])  # labels only: seconds
    meta = {"run": portable(run), "data": portable(dataset.root), "predictors_dir": portable(predictors),
            "device": device_name(dev), "seconds": round(time.perf_counter() - start, 1),
            "date": time.strftime("%Y-%m-%d"), "mechanisms": mechanisms}
    return write_report(metrics_document(results, meta), out)

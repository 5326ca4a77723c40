"""``causaldiffae data check DIR``: validate a dataset folder and summarise it before training on it."""

from __future__ import annotations

from pathlib import Path

import torch

from ..mechanisms import MechanismSet, deterministic_warning
from .base import SPLITS, ImageDataset, load_dataset


def summarize(root: str | Path, resize_to: int | None = None) -> str:
    """Load every image and label of ``root`` (raising a clear error on the first problem) and describe it:
    variables and edges, label coverage per variable and split, value ranges, image size and channels."""
    data = load_dataset(root, resize_to, resize=resize_to is not None)
    graph = data.graph
    lines = [f"dataset {Path(root)}: {len(data)} images of {data.image_size}x{data.image_size}, "
             f"{data.channels} channel(s)"]
    present = [s for s in SPLITS if s in data.splits]
    lines.append("splits: " + ", ".join(f"{s} {data.splits.count(s)}" for s in present))
    lines.append(f"graph: {len(graph)} variables, edges: "
                 + (", ".join(f"{a} -> {b}" for a, b in graph.edges) or "none"))
    width = max(len(v) for v in graph.variables)
    header = f"  {'variable':<{width}}  " + "  ".join(f"{s + ' labels':>16}" for s in present)
    lines += ["label coverage and range:", header + f"  {'min':>10}  {'max':>10}  normalization"]
    for i, var in enumerate(graph.nodes):
        column = data.labels[:, i]
        known = column[~torch.isnan(column)]
        cover = []
        for s in present:
            rows = torch.tensor([sp == s for sp in data.splits])
            n, k = int(rows.sum()), int((~torch.isnan(column[rows])).sum())
            cover.append(f"{k:>6}/{n:<5}{100 * k / n:>3.0f}%")
        lo, hi = (f"{known.min().item():>10.4g}", f"{known.max().item():>10.4g}") if len(known) else ("-", "-")
        norm = var.normalization or "from the training split at train time"
        lines.append(f"  {var.name:<{width}}  " + "  ".join(cover) + f"  {lo:>10}  {hi:>10}  {norm}")
    return "\n".join(lines + mechanism_lines(data))


def mechanism_lines(data: ImageDataset, steps: int = 500) -> list[str]:
    """How well each variable's parents explain it in these labels (a spline mechanism fit on the training rows,
    scored on val): one line per child, and one more per child its parents determine, which no model trained on
    these labels can move apart from them."""
    graph = data.graph
    if not any(graph.parents(v) for v in graph.variables):
        return []
    train = data.split("train").labels if "train" in data.splits else data.labels
    known = ~torch.isnan(train)
    centre = torch.nan_to_num(train).sum(0) / known.sum(0).clamp_min(1)
    spread = (torch.nan_to_num(train - centre).pow(2).sum(0) / known.sum(0).clamp_min(1)).sqrt().clamp_min(1e-6)
    norms = {v: {"mean": float(centre[i]), "std": float(spread[i])} for i, v in enumerate(graph.variables)}
    graph = graph.with_normalization(norms)
    val = data.split("val").labels if "val" in data.splits else None
    mechanisms = MechanismSet(graph, "spline")
    fits = mechanisms.fit(graph.normalize(train), None if val is None else graph.normalize(val), steps=steps)
    lines = ["mechanisms (each child from its parents, spline fit on the train labels, scored on val):"]
    lines += [f"  {fit.line()}" for fit in fits]
    lines += [f"note: {deterministic_warning(fit)}" for fit in fits if fit.fitted and fit.deterministic]
    return lines

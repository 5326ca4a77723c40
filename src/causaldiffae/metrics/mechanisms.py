"""``causaldiffae mechanisms RUN``: the causal mechanisms checked on labels alone, in seconds, before any image.

Two questions, both in label space:
- how well each mechanism explains its child on validation labels (R^2, residual spread, NLL), and which
  children their parents determine (R^2 >= 0.99: no model trained on such labels can move them apart);
- where the data's SCM is known (Pendulum, MorphoMNIST), how far each child's counterfactual under do() on each
  parent lands from the true SCM's, beside the no-op floor (the child left at its factual value). Twice: the
  mechanisms applied to the true factual labels (the mechanism alone), and the model's own counterfactual latents
  from its encoder's reading of the images (what the decoder is asked to render; no diffusion step is run).
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.base import ImageDataset
from ..model import CausalDiffAE
from .truth import scm_kind, true_label_counterfactual


@torch.inference_mode()
def check_mechanisms(model: CausalDiffAE, dataset: ImageDataset, fit_split: str = "val", cf_split: str = "test",
                     n: int = 1000, seed: int = 0, batch: int = 250) -> dict[str, Any]:
    """The mechanisms' fit on ``fit_split`` labels (the train split's when the data have no such split) and, with a
    known SCM, their counterfactual errors on up to ``n`` fully labelled rows of ``cf_split`` (one do() per row and
    parent, values drawn from that split's marginal)."""
    graph, mechanisms = model.graph, model.causal_layer.labels
    if fit_split not in dataset.splits and "train" in dataset.splits:
        fit_split = "train"
    out: dict[str, Any] = {"family": model.config.label_mechanism, "fit_split": fit_split, "cf_split": cf_split,
                           "mechanisms": [], "counterfactual": None}
    if fit_split in dataset.splits:
        labels = model.normalize_labels(dataset.split(fit_split).labels.float())
        for name in mechanisms.items:
            fit = mechanisms.score(name, labels)
            out["mechanisms"].append({**vars(fit), "deterministic": fit.fitted and fit.deterministic})
    kind = scm_kind(graph)
    if kind is None or cf_split not in dataset.splits:
        return out
    rows = dataset.split(cf_split)
    complete = (~torch.isnan(rows.labels).any(dim=1)).nonzero().flatten()
    generator = torch.Generator().manual_seed(seed)
    chosen = complete[torch.randperm(len(complete), generator=generator)[:n]].sort().values
    rows = rows.subset(chosen)
    factual = rows.labels.float()
    z = _latents(model, rows, batch) if model.encoder is not None else None
    results = []
    for parent in graph.variables:
        children = [c for c in graph.variables if c in graph.affected([parent]) and c != parent]
        if not children:
            continue
        values = factual[torch.randperm(len(factual), generator=generator), graph.index(parent)]
        truth = true_label_counterfactual(kind, graph.variables, factual, {parent: values})
        norm = {parent: graph[parent].normalize(values)}
        from_labels = graph.denormalize(mechanisms.counterfactual(model.normalize_labels(factual), norm))
        from_latents = from_known = reading = None
        if z is not None:
            reading = model.read_labels(z.z)
            from_latents = model.read_labels(model.intervene(z, {parent: values}))
            from_known = model.read_labels(model.intervene(z, {parent: values}, labels=factual))
        for child in children:
            i = graph.index(child)
            floor = float((factual[:, i] - truth[:, i]).abs().mean())
            entry = {"do": parent, "child": child, "rows": len(factual), "no_op": floor,
                     "labels": float((from_labels[:, i] - truth[:, i]).abs().mean())}
            if from_latents is not None and from_known is not None and reading is not None:
                entry["latents"] = float((from_latents[:, i] - truth[:, i]).abs().mean())
                entry["latents_known"] = float((from_known[:, i] - truth[:, i]).abs().mean())
                entry["reading"] = float((reading[:, i] - factual[:, i]).abs().mean())
            results.append(entry)
    out["counterfactual"] = {"scm": kind, "pairs": results}
    return out


def _latents(model: CausalDiffAE, rows: ImageDataset, batch: int) -> Any:
    """The encoder's latents of every image of ``rows``, in batches."""
    parts = [model.encode(rows.batch(range(i, min(i + batch, len(rows))), next(model.parameters()).device)["image"])
             for i in range(0, len(rows), batch)]
    return type(parts[0])(*(torch.cat(field) for field in zip(*parts, strict=True)))

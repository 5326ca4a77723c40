"""Attribute-level scores of counterfactuals read by the anti-causal predictors (docs/method-notes.md, "Evaluation").

Effectiveness: for do(X_k = v), the MAE between the predicted attribute of x_cf and its intended value, for
every variable (intended = the intervened value, the true SCM's value for descendants, the factual value
otherwise), in raw and normalised units. Minimality and the DAG-consistency table read how much each
variable's prediction moved between the factual image and its counterfactual.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..graph import CausalGraph


def normalized(graph: CausalGraph, labels: torch.Tensor) -> torch.Tensor:
    """Raw labels (N, n) -> the graph's normalised units (NaN stays NaN)."""
    return graph.normalize(labels.double()).float()


def attribute_errors(graph: CausalGraph, predicted: torch.Tensor, intended: torch.Tensor) -> dict[str, dict]:
    """Per variable: MAE of predicted vs intended in raw units and normalised units, over rows where the intended
    value is known (not NaN); a variable with no known row is left out."""
    raw = (predicted - intended).abs()
    norm = (normalized(graph, predicted) - normalized(graph, intended)).abs()
    out = {}
    for i, name in enumerate(graph.variables):
        known = ~torch.isnan(intended[:, i])
        if known.any():
            out[name] = {"mae": raw[known, i].mean().item(), "mae_normalized": norm[known, i].mean().item()}
    return out


def movement(graph: CausalGraph, before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """Mean absolute change of each variable, normalised units, between two label readings (N, n)."""
    change = (normalized(graph, after) - normalized(graph, before)).abs()
    return {name: torch.nanmean(change[:, i]).item() for i, name in enumerate(graph.variables)}


def non_descendant_change(graph: CausalGraph, intervened: Iterable[str], moved: dict[str, float]) -> float:
    """Mean movement of the variables an intervention must leave alone (neither intervened nor descendants);
    NaN when the intervention reaches every variable."""
    stay = [v for v in graph.variables if v not in graph.affected(intervened)]
    return sum(moved[v] for v in stay) / len(stay) if stay else float("nan")

"""Invertible mechanisms of each child given its parents, fit by likelihood on the labels (docs/method-notes.md,
"Mechanisms").

In normalised label units, the noise behind a child is ``e = (h(y) - loc(pa)) / scale(pa)`` with ``e ~ N(0, 1)``:
``h`` is a monotone spline of the child (identity for the ``additive`` and ``affine`` families), ``loc`` and
``scale`` a small MLP of the parents (``scale = 1`` for ``additive``). A counterfactual is the three steps of
Pearl's recipe, each exact: abduction ``e = abduct(y, pa)``, action (new parents, the same ``e``), prediction
``y' = predict(e, pa')``. An additive residual ``y - f(pa)`` is exact only when the noise adds outside every
nonlinearity; MorphoMNIST's ``intensity = 64 + 191 sigmoid(2 (t - 2.5) + e)`` is the case where it is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, cast

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import spline
from .graph import CausalGraph

Family = Literal["none", "additive", "affine", "spline"]
FAMILIES: tuple[str, ...] = ("none", "additive", "affine", "spline")
MIN_SCALE = 1e-3  # of the noise, in normalised units: a deterministic child fits to this precision
MIN_ROWS = 10  # fewer labelled rows than this leave a mechanism unfitted (the causal layer's MLP then acts)
DETERMINISTIC_R2 = 0.99  # a child its parents explain this well cannot be intervened on apart from them


class Mechanism(nn.Module):
    """One child given its parents, normalised units: ``e = (h(y) - loc(pa)) / scale(pa)``, invertible in y and e."""

    bounds: torch.Tensor
    rows: torch.Tensor
    r2: torch.Tensor
    spread: torch.Tensor

    def __init__(self, n_parents: int, family: Family, hidden: int = 64, bins: int = 16) -> None:
        super().__init__()
        if family not in ("additive", "affine", "spline"):
            raise ValueError(f"mechanism family must be additive, affine or spline, got {family!r}")
        self.family, self.n_parents, self.hidden, self.bins = family, n_parents, hidden, bins
        self.net = nn.Sequential(nn.Linear(n_parents, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2))
        if family == "spline":
            self.raw_widths = nn.Parameter(torch.zeros(bins))
            self.raw_heights = nn.Parameter(torch.zeros(bins))
            self.raw_slopes = nn.Parameter(torch.zeros(bins - 1))
        # what the fit found, saved with the weights: the spline's interval (the labels' range and a margin),
        # labelled rows used (0: never fitted, and then R^2 and spread mean nothing), validation R^2 and residual
        # spread (normalised units); all finite, as a checkpoint must be
        self.register_buffer("bounds", torch.tensor([-4.0, 4.0]))
        self.register_buffer("rows", torch.zeros((), dtype=torch.long))
        self.register_buffer("r2", torch.zeros(()))
        self.register_buffer("spread", torch.zeros(()))

    @property
    def fitted(self) -> bool:
        return int(self.rows) > 0

    def loc_scale(self, parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """parents (B, |pa|) -> loc (B,), scale (B,)."""
        out = self.net(parents)
        if self.family == "additive":
            return out[:, 0], torch.ones_like(out[:, 0])
        return out[:, 0], MIN_SCALE + F.softplus(out[:, 1])

    def warp(self, y: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """h(y) (or h^-1) and log |dh/dy| (or of the inverse); the identity for additive and affine."""
        if self.family != "spline":
            return y, torch.zeros_like(y)
        lo, hi = float(self.bounds[0]), float(self.bounds[1])
        xk, yk, slopes = spline.knots(self.raw_widths, self.raw_heights, self.raw_slopes, lo, hi)
        return spline.transform(y, xk, yk, slopes, inverse)

    def abduct(self, y: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """The noise e (B,) behind child values y (B,) at parents (B, |pa|)."""
        loc, scale = self.loc_scale(parents)
        return (self.warp(y)[0] - loc) / scale

    def predict(self, noise: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """The child (B,) that noise e (B,) gives at parents (B, |pa|)."""
        loc, scale = self.loc_scale(parents)
        return self.warp(loc + scale * noise, inverse=True)[0]

    def counterfactual(self, y: torch.Tensor, parents: torch.Tensor, new_parents: torch.Tensor) -> torch.Tensor:
        """Abduction at the factual parents, the same noise at the new ones."""
        return self.predict(self.abduct(y, parents), new_parents)

    def log_prob(self, y: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """log p(y | pa) (B,): the standard normal density of e, with the change of variables."""
        loc, scale = self.loc_scale(parents)
        warped, logdet = self.warp(y)
        e = (warped - loc) / scale
        return -0.5 * e.pow(2) - 0.5 * math.log(2 * math.pi) + logdet - scale.log()


@dataclass
class MechanismFit:
    """How one mechanism fit: rows used, validation R^2 and residual spread (in the child's units)."""

    child: str
    parents: list[str]
    rows: int
    """Training rows with the child and every parent labelled."""
    val_rows: int
    r2: float
    spread: float
    nll: float
    fitted: bool = True

    @property
    def deterministic(self) -> bool:
        return self.r2 >= DETERMINISTIC_R2

    def to_dict(self) -> dict:
        """JSON-ready: NaN (nothing to score) as None."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in vars(self).items()}

    def line(self) -> str:
        if not self.fitted:
            return (f"{self.child} | {', '.join(self.parents)}: not fitted ({self.rows} rows with the child and every "
                    f"parent labelled, fewer than {MIN_ROWS}); the causal layer's MLP carries do() to it")
        return (f"{self.child} | {', '.join(self.parents)}: fit on {self.rows:,} labelled rows; on {self.val_rows:,} "
                f"validation rows R^2 {self.r2:.4f}, residual spread {self.spread:.4g}, NLL {self.nll:.3f}")


class MechanismSet(nn.Module):
    """The mechanisms of every child of a graph, by name (no entries for family ``none``)."""

    def __init__(self, graph: CausalGraph, family: Family = "spline", hidden: int = 64) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"mechanism family must be one of {', '.join(FAMILIES)}, got {family!r}")
        self.graph, self.family = graph, family
        self.items = nn.ModuleDict({
            v: Mechanism(len(graph.parents(v)), family, hidden)
            for v in graph.variables if graph.parents(v) and family != "none"})

    def mechanism(self, name: str) -> Mechanism:
        """The mechanism of ``name`` (a child of the graph), fitted or not."""
        return cast(Mechanism, self.items[name])

    def fitted(self, name: str) -> Mechanism | None:
        """The fitted mechanism of ``name``, or None (a root, family none, or too few labels)."""
        mech = self.mechanism(name) if name in self.items else None
        return mech if mech is not None and mech.fitted else None

    def parents_of(self, values: torch.Tensor, name: str) -> torch.Tensor:
        """(B, n) normalised values -> (B, |pa|) of ``name``'s parents."""
        return values[:, [self.graph.index(p) for p in self.graph.parents(name)]]

    def fit(self, labels: torch.Tensor, val: torch.Tensor | None = None, steps: int = 2000, lr: float = 1e-2,
            seed: int = 0, progress: bool = False) -> list[MechanismFit]:
        """Fit every mechanism by maximum likelihood on the rows of ``labels`` (N, n; normalised, NaN = missing)
        where the child and all its parents are labelled; score on ``val`` (the training rows when None).
        Full-batch Adam with a cosine decay, from a fresh initialisation seeded by ``seed``: reproducible."""
        reports = []
        for name in self.items:
            mech = self.mechanism(name)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                fresh = Mechanism(mech.n_parents, mech.family, mech.hidden, mech.bins)
            mech.load_state_dict(fresh.to(labels.device).state_dict())
            reports.append(self._fit_one(name, mech, labels, val, steps, lr, progress))
        return reports

    def _fit_one(self, name: str, mech: Mechanism, labels: torch.Tensor, val: torch.Tensor | None, steps: int,
                 lr: float, progress: bool) -> MechanismFit:
        parents = self.graph.parents(name)
        y, pa = _complete(labels, self.graph.index(name), self.parents_of(labels, name))
        if len(y) < MIN_ROWS:
            return MechanismFit(name, parents, len(y), 0, float("nan"), float("nan"), float("nan"), fitted=False)
        margin = 0.05 * float(y.max() - y.min()) + 1e-3
        mech.bounds.copy_(torch.tensor([float(y.min()) - margin, float(y.max()) + margin]))
        optimizer = torch.optim.Adam(mech.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        with torch.enable_grad():
            for _ in tqdm(range(steps), desc=f"mechanism {name}", disable=not progress, leave=False):
                loss = -mech.log_prob(y, pa).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        mech.requires_grad_(False)
        scored = self.score(name, labels if val is None else val)
        if not scored.val_rows:  # no validation row has the child and its parents: score on the training rows
            scored = self.score(name, labels)
        mech.rows.fill_(len(y))
        mech.r2.fill_(scored.r2)
        mech.spread.fill_(scored.spread / self.graph[name].scale[1])
        return replace(scored, rows=len(y), fitted=True)

    @torch.no_grad()
    def score(self, name: str, labels: torch.Tensor) -> MechanismFit:
        """R^2 of the mechanism's median prediction, residual spread (label units) and NLL (normalised units) on the
        rows of ``labels`` (N, n; normalised) where the child and its parents are labelled."""
        mech = self.mechanism(name)
        y, pa = _complete(labels, self.graph.index(name), self.parents_of(labels, name))
        nan = float("nan")
        if not len(y):
            return MechanismFit(name, self.graph.parents(name), int(mech.rows), 0, nan, nan, nan, mech.fitted)
        residual = y - mech.predict(torch.zeros_like(y), pa)
        r2 = 1 - float(residual.pow(2).mean()) / max(float(y.var(unbiased=False)), 1e-12)
        spread = float(residual.std(unbiased=False)) * self.graph[name].scale[1]
        return MechanismFit(name, self.graph.parents(name), int(mech.rows), len(y), r2, spread,
                            -float(mech.log_prob(y, pa).mean()), mech.fitted)

    def describe(self, name: str) -> MechanismFit:
        """The fit saved with ``name``'s mechanism (validation R^2, spread in label units)."""
        mech = self.mechanism(name)
        return MechanismFit(name, self.graph.parents(name), int(mech.rows), 0, float(mech.r2),
                            float(mech.spread) * self.graph[name].scale[1], float("nan"), mech.fitted)

    def deterministic(self, name: str) -> MechanismFit | None:
        """The fit of ``name`` when its parents explain it (R^2 >= DETERMINISTIC_R2), else None."""
        if self.fitted(name) is None:
            return None
        fit = self.describe(name)
        return fit if fit.deterministic else None

    def counterfactual(self, factual: torch.Tensor, do: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The label-space SCM's counterfactual (B, n) of normalised factual values (B, n) under ``do`` (name ->
        (B,) normalised): intervened values set, each affected child moved by its mechanism in topological order
        (a child without a fitted mechanism keeps its value), everything else unchanged."""
        out = factual.clone()
        affected = self.graph.affected(do)
        for name in self.graph.topological_order():
            i = self.graph.index(name)
            mech = self.fitted(name)
            if name in do:
                out[:, i] = do[name]
            elif name in affected and mech is not None:
                out[:, i] = mech.counterfactual(factual[:, i], self.parents_of(factual, name),
                                                self.parents_of(out, name))
        return out


def deterministic_warning(fit: MechanismFit) -> str:
    """The one line that says a variable cannot be moved apart from its parents by anything trained on these data."""
    return (f"{fit.child} is a deterministic function of {', '.join(fit.parents)} in the training labels "
            f"(R^2 {fit.r2:.4f}): no image shows it apart from them, so do({fit.child}) alone asks for something no "
            "model trained on these data has seen, and is unlikely to be rendered")


def _complete(labels: torch.Tensor, child: int, parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows where the child and every parent are labelled: y (N,), parents (N, |pa|)."""
    keep = ~torch.isnan(labels[:, child]) & ~torch.isnan(parents).any(dim=1)
    return labels[keep, child].float(), parents[keep].float()

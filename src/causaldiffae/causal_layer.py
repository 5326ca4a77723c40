"""The causal layer: exogenous u -> causal latents z through neural mechanisms, in topological order.

``z_i = f_i(z_pa(i)) + u_i`` for a variable with parents, ``z_i = u_i`` for a root (docs/method-notes.md, "Model").
The reference code computes ``f_i(sum of the parents' u) + u_i`` for every i, which is wrong for graphs deeper
than one layer and gives roots a constant offset; here each f_i sees exactly its parents' z blocks.

Under do(), a child with a fitted label mechanism (mechanisms.py) moves along its block's label direction (the
all-ones direction, whose mean the model reads as the label) by exactly what the mechanism's counterfactual says,
and keeps the rest of its factual block (the image's style): the factual z, and so the UNet's input for the
factual image, is the same with and without the mechanisms (docs/method-notes.md, "Mechanisms").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .graph import CausalGraph
from .mechanisms import Family, MechanismSet


class CausalLayer(nn.Module):
    """Evaluates the latent SCM; ``do`` replaces blocks and recomputes only their descendants."""

    def __init__(self, graph: CausalGraph, dim: int, hidden: int = 64, label_mechanism: Family = "none") -> None:
        super().__init__()
        self.graph, self.dim = graph, dim
        self.order = graph.topological_order()
        self.parent_index = {v: [graph.index(p) for p in graph.parents(v)] for v in graph.variables}
        self.mechanisms = nn.ModuleDict({
            v: nn.Sequential(nn.Linear(len(pa) * dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))
            for v, pa in self.parent_index.items() if pa
        })
        self.labels = MechanismSet(graph, label_mechanism)

    def forward(self, u: torch.Tensor, do: Mapping[str, torch.Tensor] | None = None,
                factual: torch.Tensor | None = None, median: bool = False,
                known: torch.Tensor | None = None) -> torch.Tensor:
        """u (B, n_vars, d) -> z (B, n_vars, d).

        ``do`` maps variable names to latent values (B, d) (or (d,), broadcast). Blocks that no intervention
        reaches are copied from ``factual`` (computed here when not given), so they are bit-identical to the
        factual z; intervened blocks take the given value; their descendants are recomputed with the same u, or,
        where a label mechanism is fitted, shifted along the label direction by its counterfactual. ``median``
        (images no encoder has seen) gives such a child its mechanism's value at zero noise instead. ``known`` (B,
        n_vars), normalised factual labels with NaN where unknown, replaces the model's reading of the factual
        blocks (their means) in that abduction, so the noise is the one behind the true labels.
        """
        if u.dim() != 3 or u.shape[1:] != (len(self.graph), self.dim):
            raise ValueError(f"u must have shape (B, {len(self.graph)}, {self.dim}), got {tuple(u.shape)}")
        do = dict(do or {})
        for name in do:
            self.graph[name]  # raises naming the unknown variable
        if do and factual is None:
            factual = self(u)
        affected = self.graph.affected(do)
        blocks: list[torch.Tensor | None] = [None] * len(self.graph)
        # each computed block's label value, factual ones as read (or known): what a child's mechanism sees
        levels: list[torch.Tensor | None] = [None] * len(self.graph)
        means = None if factual is None else factual.mean(-1)  # (B, n): the model's reading of every variable
        if means is not None and known is not None:
            means = torch.where(torch.isnan(known), means, known.to(means))
        for name in self.order:
            i = self.graph.index(name)
            if name in do:
                blocks[i] = do[name].to(u).expand(u.shape[0], self.dim)
            elif factual is not None and name not in affected:
                blocks[i] = factual[:, i]
            elif name in self.mechanisms:
                parents = torch.cat([_computed(blocks, j) for j in self.parent_index[name]], dim=-1)  # (B, |pa| * d)
                block = self.mechanisms[name](parents) + u[:, i]
                mech = self.labels.fitted(name)
                if mech is not None and means is not None and factual is not None:
                    new_parents = torch.stack([_computed(levels, j) for j in self.parent_index[name]], dim=1)
                    if median:  # the mechanism's value at zero noise, the rest of the block as the MLP made it
                        label = mech.predict(torch.zeros_like(new_parents[:, 0]), new_parents)
                        block = block + (label - block.mean(-1))[:, None]
                    else:  # abduction at the factual parents, the same noise at the new ones; the block moves by
                        # the change, so the decoder sees the factual block plus what the mechanism adds
                        label = mech.counterfactual(means[:, i], means[:, self.parent_index[name]], new_parents)
                        block = factual[:, i] + (label - means[:, i])[:, None]
                    levels[i] = label
                blocks[i] = block
            else:
                blocks[i] = u[:, i]
            if levels[i] is None:
                levels[i] = means[:, i] if means is not None and name not in do and name not in affected \
                    else _computed(blocks, i).mean(-1)
        return torch.stack([_computed(blocks, i) for i in range(len(blocks))], dim=1)


def _computed(blocks: list[torch.Tensor | None], i: int) -> torch.Tensor:
    """Block ``i``, which the topological order has computed by now."""
    block = blocks[i]
    if block is None:
        raise RuntimeError(f"causal layer: latent block {i} is used before it is computed (broken topological order)")
    return block

"""The causal graph as data: named variables with units and normalisation, and the edges between them.

The reference implementation hard-codes the adjacency matrix inside the UNet; here the graph is a YAML/dict
that every other part reads, so a user's own graph needs no code edits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import load_yaml

_VARIABLE_KEYS = {"name", "units", "description", "normalization", "range"}


@dataclass(frozen=True)
class Variable:
    """One node of the graph: a named scalar attribute of an image, in its own units."""

    name: str
    units: str = ""
    description: str = ""
    normalization: dict[str, float] | None = None
    """``{"mean": m, "std": s}`` or ``{"min": a, "max": b}``: maps label units to about [-1, 1]."""
    range: tuple[float, float] | None = None
    """The values the data covers; an intervention outside it is an extrapolation."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"variable name must be a non-empty string, got {self.name!r}")
        if self.normalization is not None:
            _check_normalization(self.name, self.normalization)
        if self.range is not None:
            lo, hi = _pair(self.name, "range", self.range)
            if not lo <= hi:
                raise ValueError(f"variable {self.name!r}: range [{lo}, {hi}] has min > max")

    @property
    def scale(self) -> tuple[float, float]:
        """(centre, half-width) so that ``(value - centre) / half_width`` lies in about [-1, 1]."""
        norm = self.normalization
        if norm is None:
            raise ValueError(
                f"variable {self.name!r} has no normalization; give 'mean'/'std' or 'min'/'max' in the graph "
                "(training computes it from the training split when it is absent)"
            )
        if "mean" in norm:
            return float(norm["mean"]), float(norm["std"])
        lo, hi = float(norm["min"]), float(norm["max"])
        return (lo + hi) / 2, (hi - lo) / 2

    def normalize(self, value: Any) -> Any:
        centre, half = self.scale
        return (value - centre) / half

    def denormalize(self, value: Any) -> Any:
        centre, half = self.scale
        return value * half + centre

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.units:
            out["units"] = self.units
        if self.description:
            out["description"] = self.description
        if self.normalization is not None:
            out["normalization"] = {k: float(v) for k, v in self.normalization.items()}
        if self.range is not None:
            out["range"] = [float(self.range[0]), float(self.range[1])]
        return out


def _pair(name: str, what: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"variable {name!r}: {what} must be a pair [min, max], got {value!r}")
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"variable {name!r}: {what} must hold two numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"variable {name!r}: {what} must be finite, got {value!r}")
    return lo, hi


def _check_normalization(name: str, norm: Mapping[str, Any]) -> None:
    if not isinstance(norm, Mapping):
        raise ValueError(f"variable {name!r}: normalization must be a mapping, got {norm!r}")
    keys = set(norm)
    if keys == {"mean", "std"}:
        _, std = _pair(name, "normalization", [norm["mean"], norm["std"]])
        if std <= 0:
            raise ValueError(f"variable {name!r}: normalization std must be > 0, got {std}")
    elif keys == {"min", "max"}:
        lo, hi = _pair(name, "normalization", [norm["min"], norm["max"]])
        if hi <= lo:
            raise ValueError(f"variable {name!r}: normalization needs min < max, got {lo} and {hi}")
    else:
        raise ValueError(
            f"variable {name!r}: normalization must have keys mean/std or min/max, got {sorted(keys, key=repr)}"
        )


@dataclass(frozen=True)
class CausalGraph:
    """A DAG over named variables. ``A[i, j] = 1`` means ``variables[i] -> variables[j]``."""

    nodes: tuple[Variable, ...]
    edges: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("the causal graph is empty: give at least one variable")
        seen: set[str] = set()
        for var in self.nodes:
            if var.name in seen:
                raise ValueError(f"duplicate variable {var.name!r} in the causal graph")
            seen.add(var.name)
        for edge in self.edges:
            if len(edge) != 2:
                raise ValueError(f"an edge must be a pair [parent, child], got {list(edge)!r}")
            for end in edge:
                if end not in seen:
                    raise ValueError(
                        f"edge {list(edge)!r} names unknown variable {end!r}; variables are {sorted(seen)}"
                    )
            if edge[0] == edge[1]:
                raise ValueError(f"self-loop on variable {edge[0]!r}: a variable cannot cause itself")
        if len(set(self.edges)) != len(self.edges):
            raise ValueError("the causal graph lists an edge twice")
        self.topological_order()  # raises on a cycle

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CausalGraph:
        """Build from ``{"variables": [{"name": ...}, ...], "edges": [[parent, child], ...]}``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a causal graph must be a mapping with 'variables' and 'edges', got {data!r}")
        unknown = set(data) - {"variables", "edges"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown, key=repr)} in the causal graph; expected variables, "
                             "edges")
        raw_vars = data.get("variables") or []
        if not isinstance(raw_vars, list):
            raise ValueError("'variables' must be a list of {name: ...} mappings")
        nodes = tuple(_variable_from(v) for v in raw_vars)
        raw_edges = data.get("edges") or []
        if not isinstance(raw_edges, list):
            raise ValueError("'edges' must be a list of [parent, child] pairs")
        edges = tuple(tuple(e) if isinstance(e, (list, tuple)) else (e,) for e in raw_edges)
        return cls(nodes, edges)

    @classmethod
    def from_yaml(cls, path: str | Path) -> CausalGraph:
        data = load_yaml(path, "graph file")
        try:
            return cls.from_dict(data or {})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"variables": [v.to_dict() for v in self.nodes], "edges": [list(e) for e in self.edges]}

    def with_normalization(self, norms: Mapping[str, Mapping[str, float]]) -> CausalGraph:
        """A copy where the given variables take the given normalisation (others keep theirs)."""
        nodes = tuple(
            Variable(v.name, v.units, v.description, dict(norms[v.name]), v.range) if v.name in norms else v
            for v in self.nodes
        )
        return CausalGraph(nodes, self.edges)

    # -- queries -----------------------------------------------------------------------------------
    @property
    def variables(self) -> list[str]:
        """Variable names in file order: the order of latent blocks and label columns."""
        return [v.name for v in self.nodes]

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, name: str) -> Variable:
        for var in self.nodes:
            if var.name == name:
                return var
        raise ValueError(f"unknown variable {name!r}; valid variables are {self.variables}")

    def index(self, name: str) -> int:
        self[name]
        return self.variables.index(name)

    def normalize(self, labels: Any) -> Any:
        """Labels (..., n) in label units, one column per variable in ``variables`` order (a torch tensor) ->
        normalised units, about [-1, 1]; NaN (a missing label) stays NaN."""
        centre, half = self._scales(labels)
        return (labels - centre) / half

    def denormalize(self, values: Any) -> Any:
        """The inverse of ``normalize``: normalised values (..., n) -> label units."""
        centre, half = self._scales(values)
        return values * half + centre

    def named(self, columns: Any) -> dict[str, Any]:
        """Labels (..., n), one column per variable -> {name: (...)}: how users see labels."""
        if columns.shape[-1] != len(self.nodes):
            raise ValueError(f"labels have {columns.shape[-1]} columns; the graph has {len(self.nodes)} variables "
                             f"({', '.join(self.variables)})")
        return {name: columns[..., i] for i, name in enumerate(self.variables)}

    def stacked(self, labels: Mapping[str, Any]) -> Any:
        """{name: (...)} with every variable -> a tensor (..., n) in ``variables`` order: the inverse of ``named``."""
        missing, unknown = [v for v in self.variables if v not in labels], sorted(set(labels) - set(self.variables))
        if missing or unknown:
            raise ValueError(f"labels need exactly the graph's variables: missing {missing}, unknown {unknown}")
        import torch

        return torch.stack([torch.as_tensor(labels[v]) for v in self.variables], dim=-1)

    def _scales(self, like: Any) -> tuple[Any, Any]:
        """Every variable's (centre, half-width) as two (n,) tensors of ``like``'s dtype and device."""
        if like.shape[-1] != len(self.nodes):
            raise ValueError(f"labels have {like.shape[-1]} columns; the graph has {len(self.nodes)} variables "
                             f"({', '.join(self.variables)})")
        scales = [v.scale for v in self.nodes]
        return like.new_tensor([c for c, _ in scales]), like.new_tensor([h for _, h in scales])

    def parents(self, name: str) -> list[str]:
        """Parents of ``name`` in file order."""
        self[name]
        parents = {p for p, c in self.edges if c == name}
        return [v for v in self.variables if v in parents]

    def children(self, name: str) -> list[str]:
        self[name]
        children = {c for p, c in self.edges if p == name}
        return [v for v in self.variables if v in children]

    def descendants(self, name: str) -> list[str]:
        """All variables reachable from ``name`` (excluding itself), in topological order."""
        found: set[str] = set()
        stack = self.children(name)
        while stack:
            node = stack.pop()
            if node not in found:
                found.add(node)
                stack.extend(self.children(node))
        return [v for v in self.topological_order() if v in found]

    def affected(self, names: Iterable[str]) -> set[str]:
        """The intervened variables and all their descendants: what an intervention can change."""
        out: set[str] = set()
        for name in names:
            out.add(name)
            out.update(self.descendants(name))
        return out

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """The given variables and every variable with a directed path into one of them."""
        found: set[str] = set()
        stack = list(names)
        while stack:
            node = stack.pop()
            if node not in found:
                found.add(node)
                stack.extend(self.parents(node))
        return found

    def d_separated(self, x: str, y: str, given: Iterable[str] = ()) -> bool:
        """Whether every path between ``x`` and ``y`` is blocked by ``given`` (d-separation): then the graph
        implies ``x`` independent of ``y`` given ``given`` in any distribution it generates (Markov property).

        Reachability over (node, direction) pairs (Koller & Friedman, Algorithm 3.1): a trail passes a chain or a
        fork at a node outside ``given``, and a collider only when the collider or one of its descendants is in
        ``given`` (the collider is then among the ancestors of ``given``)."""
        given = set(given)
        for name in (x, y, *given):
            self[name]
        if x == y or x in given or y in given:
            raise ValueError(f"d-separation needs two different variables outside the conditioning set, got {x!r}, "
                             f"{y!r} given {sorted(given)}")
        opens_colliders = self.ancestors(given)
        # "up": the trail arrived from a child (or starts here), "down": it arrived from a parent
        stack, seen = [(x, "up")], set()
        while stack:
            node, direction = stack.pop()
            if (node, direction) in seen:
                continue
            seen.add((node, direction))
            if node == y:
                return False
            if direction == "up" and node not in given:
                stack += [(p, "up") for p in self.parents(node)] + [(c, "down") for c in self.children(node)]
            elif direction == "down":
                if node not in given:
                    stack += [(c, "down") for c in self.children(node)]
                if node in opens_colliders:
                    stack += [(p, "up") for p in self.parents(node)]
        return True

    def implied_independences(self, max_given: int | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
        """Every (x, y, Z) with x and y d-separated by Z: all the conditional independences the graph implies,
        x before y in file order, Z in file order, smaller sets first; ``max_given`` bounds the size of Z (the
        count grows as 2^n). Adjacent pairs are never separated, so they are not searched."""
        names = self.variables
        adjacent = {frozenset(e) for e in self.edges}
        found = []
        for i, x in enumerate(names):
            for y in names[i + 1 :]:
                if frozenset((x, y)) in adjacent:
                    continue
                others = [v for v in names if v not in (x, y)]
                largest = len(others) if max_given is None else min(max_given, len(others))
                for size in range(largest + 1):
                    found += [(x, y, z) for z in itertools.combinations(others, size) if self.d_separated(x, y, z)]
        return found

    def topological_order(self) -> list[str]:
        """Kahn's algorithm, ties broken by file order; raises naming the variables of a cycle."""
        indegree = {v: 0 for v in self.variables}
        for _, child in self.edges:
            indegree[child] += 1
        order: list[str] = []
        ready = [v for v in self.variables if indegree[v] == 0]
        while ready:
            node = ready.pop(0)
            order.append(node)
            for child in [c for p, c in self.edges if p == node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
            ready.sort(key=self.variables.index)
        if len(order) < len(self.variables):
            raise ValueError(f"the causal graph has a cycle: {' -> '.join(self._find_cycle(set(order)))}")
        return order

    def _find_cycle(self, acyclic: set[str]) -> list[str]:
        """Walk parent links among the nodes left by Kahn's algorithm until one repeats."""
        left = [v for v in self.variables if v not in acyclic]
        path = [left[0]]
        while True:
            parent = next(p for p, c in self.edges if c == path[-1] and p not in acyclic)
            if parent in path:
                cycle = path[path.index(parent) :] + [parent]
                return list(reversed(cycle))
            path.append(parent)

    def adjacency(self) -> list[list[int]]:
        """``A[i][j] = 1`` for an edge ``variables[i] -> variables[j]`` (row = parent)."""
        names = self.variables
        matrix = [[0] * len(names) for _ in names]
        for parent, child in self.edges:
            matrix[names.index(parent)][names.index(child)] = 1
        return matrix


def _variable_from(raw: Any) -> Variable:
    if isinstance(raw, str):
        return Variable(raw)
    if not isinstance(raw, Mapping) or "name" not in raw:
        raise ValueError(f"each variable must be a mapping with a 'name', got {raw!r}")
    unknown = set(raw) - _VARIABLE_KEYS
    if unknown:
        raise ValueError(
            f"variable {raw['name']!r}: unknown key(s) {sorted(unknown, key=repr)}; allowed are "
            f"{sorted(_VARIABLE_KEYS)}"
        )
    rng = raw.get("range")
    return Variable(
        name=raw["name"],
        units=str(raw.get("units", "") or ""),
        description=str(raw.get("description", "") or ""),
        normalization=raw.get("normalization"),
        range=_pair(raw["name"], "range", rng) if rng is not None else None,
    )

"""``causaldiffae graph check`` and ``graph suggest``: the user's causal graph held against the labels.

A DAG implies conditional independences (d-separation: ``CausalGraph.implied_independences``). ``check`` tests
each one on labels.csv with causal-learn's CI tests: Fisher-z (partial correlation; linear-Gaussian) or KCI
(kernel; nonlinear, on a seeded subsample of at most ``max_rows`` rows per test, as it costs O(n^3)). The
p-values are corrected for testing many at once (Holm by default: the chance of any false alarm stays below
alpha; or Benjamini-Hochberg, which bounds the share of false alarms instead), and every rejected independence
names a pair of variables that the data argue should be connected. ``suggest`` runs causal-learn's PC with the
same test and sets the graph it finds beside the user's.

Two limits that the reports state rather than hide:

- A test of x ⟂ y given Z where x (or y) is a deterministic function of Z: given Z, x is a constant, so the
  independence holds trivially, yet no CI test sees it. Fisher-z's linear residuals keep the nonlinear part of the
  function and "reject" it, and so does KCI's kernel regression once n is large. Such an independence is reported
  as determined (with the test's p-value, outside the multiple-testing family) when a cross-validated
  k-nearest-neighbour regression explains x from Z with R^2 >= ``mechanisms.DETERMINISTIC_R2``. Pendulum's
  shadows, functions of angle and light, are this case.
- PC assumes faithfulness, which deterministic relations break: the edges around a determined variable may be
  wrong, and the suggestion names those variables.

Missing labels: every test uses the rows that have labels for all its variables (test-wise deletion), and says
how many.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import read_utf8
from .data.base import SPLITS, read_labels
from .graph import CausalGraph
from .mechanisms import DETERMINISTIC_R2
from .metrics.report import table

TESTS: dict[str, str] = {"fisherz": "Fisher-z", "kci": "KCI"}
CORRECTIONS: dict[str, str] = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
#: Fewest rows with labels for every variable of a test: below it no test says anything.
MIN_ROWS = 10
#: Rows of one KCI test (a seeded subsample of the labelled ones): its kernel matrices cost O(n^3).
KCI_ROWS = 1000
#: A variable with at most this many distinct values (and more than two) is read as levels, not a measurement.
DISCRETE_LEVELS = 10
_NEIGHBOURS, _FOLDS = 5, 5
_TESTWISE = "causaldiffae-testwise"


@dataclass(frozen=True)
class Labels:
    """A dataset folder's graph and labels (the rows of one split, or all), NaN where a label is missing."""

    root: Path
    graph: CausalGraph
    table: np.ndarray
    split: str = "all"
    graph_file: Path | None = None
    """Where the graph came from: ``root/graph.yaml`` or another file."""
    other_columns: tuple[str, ...] = ()
    """labels.csv columns that are not graph variables (a class column such as digit): not tested."""

    def labelled(self) -> dict[str, int]:
        """Rows with a label, per variable."""
        return {v: int((~np.isnan(self.table[:, i])).sum()) for i, v in enumerate(self.graph.variables)}


def read(root: str | Path, split: str = "all", graph_file: str | Path | None = None) -> Labels:
    """The labels of a dataset folder (labels.csv) under its graph.yaml, or under another graph file over columns
    of the same labels.csv; images are not read."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    graph_file = Path(root / "graph.yaml" if graph_file is None else graph_file)
    graph = CausalGraph.from_yaml(graph_file)
    _, splits, table = read_labels(root, graph)
    header = next(csv.reader(io.StringIO(read_utf8(root / "labels.csv"))))
    others = tuple(c for c in header if c not in ("file", "split", *graph.variables))
    if split != "all":
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are all, {', '.join(SPLITS)}")
        keep = np.array([s == split for s in splits], dtype=bool)
        if not keep.any():
            raise ValueError(f"{root / 'labels.csv'} has no rows in split {split!r}")
        table = table[keep]
    return Labels(root, graph, table, split, graph_file, others)


def adjust(p_values: Sequence[float], correction: str = "holm") -> list[float]:
    """p-values corrected for testing them together: Holm's step-down (family-wise error) or Benjamini-Hochberg's
    step-up (false discovery rate); each adjusted p is compared with alpha as the raw one would be."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    ranks = np.arange(1, m + 1)
    if correction == "holm":
        scaled = np.maximum.accumulate((m - ranks + 1) * p[order])
    else:
        scaled = np.minimum.accumulate((m / ranks * p[order])[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(scaled, 1.0)
    return out.tolist()


@dataclass(frozen=True)
class Tester:
    """One CI test on the labels by column index: the rows labelled for all its variables (test-wise deletion),
    for KCI a seeded subsample of them, then causal-learn's test."""

    table: np.ndarray
    method: str = "fisherz"
    max_rows: int = KCI_ROWS
    seed: int = 0
    names: list[str] = field(default_factory=list)
    """The variables of the table's columns, for messages."""
    source: str = "the labels"

    def __post_init__(self) -> None:
        if self.method not in TESTS:
            raise ValueError(f"unknown CI test {self.method!r}; choose one of {', '.join(TESTS)}")

    def rows(self, columns: Sequence[int]) -> np.ndarray:
        """Indices of the rows that have a label in every one of ``columns``."""
        return np.flatnonzero(~np.isnan(self.table[:, list(columns)]).any(axis=1))

    def __call__(self, x: int, y: int, given: Sequence[int] = ()) -> tuple[float, int, int]:
        """(p-value, labelled rows, rows the test ran on) of x ⟂ y given ``given``; p is NaN where the variables
        are collinear (no partial correlation exists)."""
        from causallearn.utils.cit import CIT

        columns = [x, y, *given]
        rows = self.rows(columns)
        if len(rows) < MIN_ROWS:
            names = ", ".join(self.names[c] if c < len(self.names) else f"column {c}" for c in columns)
            raise ValueError(f"too few labelled rows in {self.source}: {len(rows)} have labels for all of {names}; "
                             f"a test needs at least {MIN_ROWS}")
        tested = rows
        if self.method == "kci" and len(rows) > self.max_rows:
            tested = np.sort(np.random.default_rng([self.seed, *columns]).choice(rows, self.max_rows, replace=False))
        data = self.table[np.ix_(tested, np.asarray(columns))]
        varying = [i for i in range(2, len(columns)) if np.ptp(data[:, i]) > 0]  # a constant tells nothing
        if np.ptp(data[:, 0]) == 0 or np.ptp(data[:, 1]) == 0:
            return 1.0, len(rows), len(tested)  # a constant is independent of anything
        try:
            with np.errstate(divide="ignore", invalid="ignore"):
                p = float(CIT(data, self.method)(0, 1, varying))
        except ValueError:  # Fisher-z's correlation matrix is singular: exact collinearity
            p = float("nan")
        return p, len(rows), len(tested)

    def r2(self, target: int, given: Sequence[int], rows: np.ndarray | None = None) -> float:
        """How much of ``target`` the variables ``given`` explain (cross-validated R^2 of a k-nearest-neighbour
        regression on standardised inputs; 1 for a constant): near 1, target is a function of them."""
        from sklearn.model_selection import KFold, cross_val_predict
        from sklearn.neighbors import KNeighborsRegressor

        rows = self.rows([target, *given]) if rows is None else rows
        y = self.table[rows, target]
        total = float(((y - y.mean()) ** 2).sum())
        if total == 0:
            return 1.0
        if not given or len(rows) < _FOLDS + _NEIGHBOURS:
            return 0.0
        z = self.table[np.ix_(rows, np.asarray(given))]
        spread = z.std(axis=0)
        z = (z - z.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        predicted = cross_val_predict(KNeighborsRegressor(n_neighbors=_NEIGHBOURS), z, y,
                                      cv=KFold(_FOLDS, shuffle=True, random_state=self.seed))
        return 1.0 - float(((y - predicted) ** 2).sum()) / total



@dataclass(frozen=True)
class Independence:
    """One implied independence x ⟂ y given Z and what the labels say of it."""

    x: str
    y: str
    given: tuple[str, ...]
    p: float
    rows: int
    """Rows with labels for x, y and Z."""
    tested_rows: int
    """Rows the test ran on (KCI: a subsample)."""
    determined: dict[str, float]
    """{x or y: R^2} where Z determines it: the independence then holds trivially, whatever the test says."""
    p_adjusted: float | None = None
    verdict: str = "holds"
    """holds or rejected (an edge: unsupported or supported), determined (holds trivially) or untestable
    (collinear variables)."""

    def statement(self) -> str:
        return f"{self.x} ⟂ {self.y}" + (f" given {', '.join(self.given)}" if self.given else "")


@dataclass(frozen=True)
class Tested:
    """What a check or a suggestion ran on: the dataset, its rows, the labelled ones per variable, the CI test."""

    root: str
    graph: str
    split: str
    rows: int
    labelled: dict[str, int]
    test: str
    alpha: float


@dataclass(frozen=True)
class GraphCheck(Tested):
    """Every independence the graph implies, tested on the labels."""

    correction: str
    independences: tuple[Independence, ...]
    edges: tuple[Independence, ...]
    """Each edge parent -> child as the independence parent ⟂ child given the child's other parents, which the
    data should reject (verdict supported); unsupported: no dependence found, the edge may be superfluous (or the
    dependence one the test cannot see). Information only: a graph's edges imply no independence."""
    notes: tuple[str, ...] = ()

    @property
    def rejected(self) -> list[Independence]:
        return [i for i in self.independences if i.verdict == "rejected"]

    @property
    def passed(self) -> bool:
        """No implied independence is rejected at ``alpha`` after the correction."""
        return not self.rejected

    def argued_edges(self) -> list[tuple[str, str]]:
        """The pairs of the rejected independences, once each: the data say they are dependent, so the graph
        should connect them (an edge between them, or one that opens a path)."""
        return list(dict.fromkeys((i.x, i.y) for i in self.rejected))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(passed=self.passed, argued_edges=[list(e) for e in self.argued_edges()],
                   correction_name=CORRECTIONS[self.correction])
        return out


def check(labels: Labels, method: str = "fisherz", alpha: float = 0.05, correction: str = "holm",
          max_given: int | None = None, max_rows: int = KCI_ROWS, seed: int = 0) -> GraphCheck:
    """Test every conditional independence that ``labels.graph`` implies (conditioning sets of at most
    ``max_given`` variables) and correct the p-values of the tested ones together."""
    _check_level(alpha)
    graph = labels.graph
    tester = _tester(labels, method, max_rows, seed)
    found = _tested(tester, graph.implied_independences(max_given), alpha, correction)
    edges = [(a, b, tuple(p for p in graph.parents(b) if p != a)) for a, b in graph.edges]
    supported = _tested(tester, edges, alpha, correction, ("unsupported", "supported"))
    return GraphCheck(*_source(labels), method, alpha, correction,
                      found, supported, tuple(_notes(labels, method, max_rows, [*found, *supported])))


def _tested(tester: Tester, triples: Sequence[tuple[str, str, tuple[str, ...]]], alpha: float, correction: str,
            verdicts: tuple[str, str] = ("holds", "rejected")) -> tuple[Independence, ...]:
    """Each (x, y, Z) tested, its p-value corrected within this family, and judged: ``verdicts`` names an
    independence kept and one rejected at ``alpha``."""
    names = tester.names
    found = []
    for x, y, given in triples:
        columns = [names.index(v) for v in (x, y, *given)]
        p, rows, tested = tester(columns[0], columns[1], columns[2:])
        labelled = tester.rows(columns)
        determined = {v: r2 for v, r2 in ((v, tester.r2(names.index(v), columns[2:], labelled)) for v in (x, y))
                      if r2 >= DETERMINISTIC_R2}
        found.append(Independence(x, y, tuple(given), p, rows, tested, determined, verdict="determined"
                                  if determined else "untestable" if np.isnan(p) else verdicts[0]))
    family = [i for i, ind in enumerate(found) if ind.verdict == verdicts[0]]
    for i, q in zip(family, adjust([found[i].p for i in family], correction), strict=True):
        found[i] = replace(found[i], p_adjusted=q, verdict=verdicts[q < alpha])
    return tuple(found)


@dataclass(frozen=True)
class Suggestion(Tested):
    """The graph PC finds in the labels, beside the user's."""

    yours: tuple[tuple[str, str], ...]
    found: tuple[tuple[str, str, str], ...]
    """(a, b, mark): mark "->" a causes b, "--" the data leave it unoriented, "<->" their orientations conflict."""
    notes: tuple[str, ...] = ()

    def comparison(self) -> list[dict[str, str]]:
        """One entry per pair that either graph connects: how each connects it and whether they agree."""
        yours = {frozenset(e): e for e in self.yours}
        found = {frozenset(e[:2]): e for e in self.found}
        out = []
        for pair in dict.fromkeys([*yours, *found]):
            mine, theirs = yours.get(pair), found.get(pair)
            if theirs is None:
                agreement = "only in yours: the data find the pair independent given some set"
            elif mine is None:
                agreement = "only in the data's: your graph leaves them unconnected"
            elif theirs[2] == "--":
                agreement = "in both; the data do not orient it (either direction fits)"
            elif theirs[2] == "<->":
                agreement = "in both; the data's orientations conflict (<->)"
            else:
                agreement = "in both, same direction" if theirs[:2] == mine else "in both, reversed"
            out.append({"yours": f"{mine[0]} -> {mine[1]}" if mine else "",
                        "data": f"{theirs[0]} {theirs[2]} {theirs[1]}" if theirs else "", "agreement": agreement})
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["comparison"] = self.comparison()
        return out


def suggest(labels: Labels, method: str = "fisherz", alpha: float = 0.05, max_rows: int = KCI_ROWS,
            seed: int = 0) -> Suggestion:
    """causal-learn's PC (stable skeleton, colliders from the separating sets, Meek's rules) on the labels, with
    the same test-wise CI tests as ``check``."""
    from causallearn.search.ConstraintBased.PC import pc

    _check_level(alpha)
    _register_testwise()
    names = labels.graph.variables
    tester = _tester(labels, method, max_rows, seed)
    result = pc(labels.table, alpha, _TESTWISE, stable=True, show_progress=False, node_names=names, tester=tester)
    marks = result.G.graph  # marks[j, i] = 1 and marks[i, j] = -1: i -> j; both -1: i -- j; both 1: i <-> j
    found = []
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b, ij, ji = names[j], marks[i, j], marks[j, i]
            if ij == -1 and ji == 1:
                found.append((a, b, "->"))
            elif ij == 1 and ji == -1:
                found.append((b, a, "->"))
            elif ij != 0 or ji != 0:
                found.append((a, b, "--" if ij == ji == -1 else "<->"))
    notes = _notes(labels, method, max_rows, [])
    for v in names:
        parents = labels.graph.parents(v)
        r2 = tester.r2(names.index(v), [names.index(p) for p in parents]) if parents else 0.0
        if r2 >= DETERMINISTIC_R2:
            notes.append(f"{v} is a deterministic function of {', '.join(parents)} in these labels (R^2 {r2:.4f}): PC "
                         "assumes faithfulness, which that breaks, and its tests given them misfire, so the edges "
                         f"around {v} may be wrong")
    return Suggestion(*_source(labels), method, alpha,
                      labels.graph.edges, tuple(found), tuple(notes))


def _register_testwise() -> None:
    """Register with causal-learn the CI test PC calls by name: ``Tester`` behind its CI-test interface (defined
    here, as causal-learn is imported only when a test runs; registering again replaces the entry)."""
    from causallearn.utils import cit

    class TestWise(cit.CIT_Base):  # type: ignore[misc]
        def __init__(self, data: np.ndarray, tester: Tester, **kwargs: Any) -> None:
            super().__init__(data, **kwargs)
            self.check_cache_method_consistent(_TESTWISE, f"{tester.method} {tester.max_rows} {tester.seed}")
            self.tester = tester

        def __call__(self, x: int, y: int, condition_set: Sequence[int] | None = None) -> float:
            return self.tester(int(x), int(y), [int(c) for c in condition_set or ()])[0]

    cit.register_ci_test(_TESTWISE, TestWise)


def _source(labels: Labels) -> tuple[str, str, str, int, dict[str, int]]:
    """The fields of ``Tested`` that come from the labels."""
    return str(labels.root), str(labels.graph_file or labels.root / "graph.yaml"), labels.split, len(labels.table), \
        labels.labelled()


def _tester(labels: Labels, method: str, max_rows: int, seed: int) -> Tester:
    return Tester(labels.table, method, max_rows, seed, labels.graph.variables, str(labels.root / "labels.csv"))


def _check_level(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"the significance level alpha must lie in (0, 1), got {alpha}")


def _notes(labels: Labels, method: str, max_rows: int, found: Sequence[Independence]) -> list[str]:
    """What a reader of the p-values should know: the test's blind spots, missing labels, levels, determinism."""
    notes = []
    if method == "fisherz":
        notes.append("Fisher-z tests partial correlation: it sees linear dependence only (a nonlinear dependence "
                     "with no correlation passes unseen; --test kci sees it), and its residuals keep any nonlinear "
                     "part of a relation, which reads as dependence where a variable is a nonlinear function of the "
                     "conditioning set")
    else:
        notes.append(f"KCI (kernel CI test) on a seeded subsample of at most {max_rows:,} labelled rows per test "
                     "(its cost grows as n^3)")
    if labels.other_columns:
        notes.append(f"labels.csv columns outside the graph are not tested: {', '.join(labels.other_columns)} (a "
                     "class column enters the check as a variable of a graph given with --graph)")
    counts = labels.labelled()
    if any(n < len(labels.table) for n in counts.values()):
        notes.append("missing labels: each test uses the rows with labels for all its variables (rows column); "
                     "labelled rows per variable: " + ", ".join(f"{v} {n:,}" for v, n in counts.items()))
    for i, v in enumerate(labels.graph.variables):
        values = np.unique(labels.table[~np.isnan(labels.table[:, i]), i])
        if len(values) == 1:
            notes.append(f"{v} is constant in these labels: independent of everything, it tests nothing")
        elif 2 < len(values) <= DISCRETE_LEVELS and method == "fisherz":
            notes.append(f"{v} takes {len(values)} distinct values: Fisher-z reads them as numbers on a line, right "
                         "for ordered levels; for unordered classes --test kci is the better choice")
    determined = [ind for ind in found if ind.verdict == "determined"]
    if determined:
        notes.append("determined: given the conditioning set, a variable of the pair is a function of it (R^2 >= "
                     f"{DETERMINISTIC_R2} of a nearest-neighbour regression), so the independence holds trivially; "
                     "the test's p-value is shown but no CI test can judge it (its regression leaves a nonlinear "
                     "remainder that reads as dependence), and it is outside the corrected family")
    return notes


def check_markdown(result: GraphCheck) -> str:
    """The check as a readable report (printed, and written as graph-check.md)."""
    tested = sum(1 for i in result.independences if i.p_adjusted is not None)
    correction = CORRECTIONS[result.correction]
    parts = [f"# Graph check: {result.root}\n", _header(result),
             f"Test: {TESTS[result.test]} (causal-learn), alpha {result.alpha:g}"
             + (f"; p-values corrected by {correction}'s method over the {tested} tested independence(s).\n"
                if tested else ".\n")]
    if not result.independences:
        parts.append("The graph implies no independence (every pair is connected): nothing to test; a complete "
                     "graph fits any data.\n")
    else:
        parts.append(_independence_table(result.independences, correction, "implied independence"))
    if result.edges:
        parts += [f"Edges: each parent ⟂ its child given the child's other parents, which the data should reject "
                  f"(information only; corrected by {correction} among the edges):\n",
                  _independence_table(result.edges, correction, "edge")]
    if result.passed:
        parts.append(f"PASS: the labels reject no implied independence at alpha {result.alpha:g}.\n")
    else:
        parts.append(f"FAIL: the labels reject {len(result.rejected)} implied independence(s) at alpha "
                     f"{result.alpha:g}; the data argue for connecting:\n")
        parts.append("\n".join(f"- {x} — {y} (" + "; ".join(
            f"{i.statement()}: p {_p(i.p_adjusted)}" for i in result.rejected if (i.x, i.y) == (x, y)) + ")"
            for x, y in result.argued_edges()) + "\n")
    return "\n".join(parts + _note_lines(result.notes))


def suggest_markdown(result: Suggestion) -> str:
    """The suggestion beside the user's graph (printed, and written as graph-suggest.md)."""
    parts = [f"# Graph suggested by the labels: {result.root}\n", _header(result),
             f"PC (causal-learn) with {TESTS[result.test]} at alpha {result.alpha:g}. `a -> b`: oriented by the "
             "data; `a -- b`: adjacent, direction not identified; `a <-> b`: conflicting orientations.\n"]
    rows = [[c["yours"] or "–", c["data"] or "–", c["agreement"]] for c in result.comparison()]
    parts.append(table(["your graph", "the data's (PC)", ""], rows) if rows else "Neither graph has an edge.\n")
    return "\n".join(parts + _note_lines(result.notes))


def _independence_table(tested: Sequence[Independence], correction: str, what: str) -> str:
    rows = [[i.statement() if what != "edge" else f"{i.x} -> {i.y}" + (f" (given {', '.join(i.given)})"
                                                                          if i.given else ""),
             _rows(i.rows, i.tested_rows), _p(i.p), "–" if i.p_adjusted is None else _p(i.p_adjusted), _verdict(i)]
            for i in tested]
    return table([what, "rows", "p", f"p ({correction})", "verdict"], rows)


def _header(result: Tested) -> str:
    where = "all splits" if result.split == "all" else f"the {result.split} split"
    full = all(n == result.rows for n in result.labelled.values())
    return (f"Graph: {result.graph}. Labels: {result.rows:,} rows ({where}), "
            + ("every variable labelled in every row.\n" if full else "labelled per variable: "
               + ", ".join(f"{v} {n:,}" for v, n in result.labelled.items()) + ".\n"))


def _rows(rows: int, tested: int) -> str:
    return f"{rows:,}" if tested == rows else f"{tested:,} of {rows:,}"


def _p(p: float | None) -> str:
    """A p-value; below 1e-16 Fisher-z's 1 - cdf has no digit left, so it reads as a bound."""
    if p is None or np.isnan(p):
        return "n/a"
    return "<1e-16" if p < 1e-16 else f"{p:.3g}"


def _verdict(ind: Independence) -> str:
    if ind.verdict == "determined":
        return "independent trivially: " + ", ".join(f"{v} is a function of {', '.join(ind.given)} (R^2 {r2:.4f})"
                                               for v, r2 in ind.determined.items())
    if ind.verdict == "untestable":
        return "untestable: collinear variables (no partial correlation)"
    return ind.verdict


def _note_lines(notes: Sequence[str]) -> list[str]:
    return ["Notes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"] if notes else []

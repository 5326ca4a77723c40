"""`causaldiffae graph check` and `graph suggest`: the graph held against labels of known structure (written by numpy
into tmp folders: labels.csv and graph.yaml, no images), the multiple-testing corrections by hand, and the built-in
Pendulum and MorphoMNIST labels exactly as their generators write them."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from causaldiffae import graph_check
from causaldiffae.data import morphomnist, pendulum
from causaldiffae.graph_check import adjust, check, read, suggest
from conftest import exit_code

N = 500


def write_labels(root: Path, columns: Mapping[str, Sequence[float]], edges: Sequence[str] = (),
                 splits: Sequence[str] | None = None) -> Path:
    """A dataset folder's labels.csv (NaN -> an empty cell) and graph.yaml (edges written 'ab': a -> b, or as pairs)."""
    root.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    n = len(columns[names[0]])
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "split", *names])
        for i in range(n):
            cells = ["" if math.isnan(columns[v][i]) else repr(float(columns[v][i])) for v in names]
            writer.writerow([f"{i}.png", splits[i] if splits else "train", *cells])
    pairs = [list(e) if isinstance(e, (tuple, list)) else [e[0], e[1]] for e in edges]
    (root / "graph.yaml").write_text(yaml.safe_dump({"variables": names, "edges": pairs}))
    return root


def chain(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    """a -> b -> c, linear-Gaussian: a ⟂ c given b, nothing else."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = a + rng.normal(size=n)
    return {"a": a, "b": b, "c": b + rng.normal(size=n)}


def collider(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    """a -> b <- c: a ⟂ c, and dependent given b."""
    rng = np.random.default_rng(seed)
    a, c = rng.normal(size=n), rng.normal(size=n)
    return {"a": a, "b": a + c + 0.5 * rng.normal(size=n), "c": c}


def fisher_z(x: np.ndarray, y: np.ndarray, given: np.ndarray | None = None) -> float:
    """Fisher-z by hand: the correlation of x and y after a least-squares fit on ``given`` (the partial
    correlation), z = atanh(r) * sqrt(n - |given| - 3), two-sided normal p. (causal-learn computes 1 - cdf, which
    is 0 below about 1e-16: tiny p-values agree to that absolute precision.)"""
    k = 0 if given is None else given.shape[1]
    if k:
        design = np.column_stack([np.ones(len(x)), given])
        x = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
        y = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    r = np.corrcoef(x, y)[0, 1]
    return float(2 * stats.norm.sf(abs(np.arctanh(r)) * math.sqrt(len(x) - k - 3)))


# -- the corrections, by hand -------------------------------------------------------------------------------------
def test_holm_and_benjamini_hochberg_by_hand():
    """p = 0.01, 0.04, 0.03, 0.20 (m = 4). Holm: sorted 0.01 x4 = 0.04, 0.03 x3 = 0.09, 0.04 x2 = 0.08 -> 0.09
    (never below the one before), 0.20 x1. BH: 0.01 x4/1 = 0.04, 0.03 x4/2 = 0.06, 0.04 x4/3 = 0.0533, 0.20 x4/4;
    from the top down, each the least of itself and those above: 0.2, 0.0533, 0.0533, 0.04."""
    p = [0.01, 0.04, 0.03, 0.20]
    np.testing.assert_allclose(adjust(p, "holm"), [0.04, 0.09, 0.09, 0.20])
    np.testing.assert_allclose(adjust(p, "bh"), [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    np.testing.assert_allclose(adjust([0.5, 0.6], "holm"), [1.0, 1.0])  # capped at 1
    assert adjust([], "holm") == []
    with pytest.raises(ValueError, match="unknown correction 'bonf'"):
        adjust(p, "bonf")


# -- check on data of known structure --------------------------------------------------------------------------------
def test_the_true_chain_passes_and_its_p_value_is_fisher_z_by_hand(tmp_path):
    data = chain()
    result = check(read(write_labels(tmp_path / "d", data, ["ab", "bc"])))
    (implied,) = result.independences
    assert implied.statement() == "a ⟂ c given b"
    assert implied.p == pytest.approx(fisher_z(data["a"], data["c"], data["b"][:, None]), rel=1e-9)
    assert implied.p > 0.05 and implied.p_adjusted == implied.p and implied.verdict == "holds"
    assert result.passed and result.argued_edges() == []
    # each edge carries a dependence (a ⟂ b and b ⟂ c, each given nothing: b's and c's only parents)
    assert [(e.x, e.y, e.given, e.verdict) for e in result.edges] == [("a", "b", (), "supported"),
                                                                      ("b", "c", (), "supported")]
    assert result.edges[0].p == pytest.approx(fisher_z(data["a"], data["b"]), rel=1e-6, abs=1e-15)


def test_a_collider_graph_on_chain_data_is_flagged_with_the_edge_it_lacks(tmp_path):
    """a -> b <- c implies a ⟂ c, which chain data (a and c correlate through b) reject: connect a and c."""
    data = chain()
    result = check(read(write_labels(tmp_path / "d", data, ["ab", "cb"])))
    (implied,) = result.independences
    assert implied.statement() == "a ⟂ c"
    assert implied.p == pytest.approx(fisher_z(data["a"], data["c"]), rel=1e-6, abs=1e-15)
    assert implied.verdict == "rejected" and not result.passed
    assert result.argued_edges() == [("a", "c")]
    text = graph_check.check_markdown(result)
    assert "FAIL" in text and "- a — c (a ⟂ c: p" in text


def test_the_p_values_are_corrected_together(tmp_path):
    """Three unconnected variables: six implied independences; each adjusted p is Holm's (or BH's) of the six."""
    rng = np.random.default_rng(0)
    folder = write_labels(tmp_path / "d", {v: rng.normal(size=200) for v in "xyz"})
    for correction in ("holm", "bh"):
        result = check(read(folder), correction=correction)
        raw = [i.p for i in result.independences]
        assert len(raw) == 6
        np.testing.assert_allclose([i.p_adjusted for i in result.independences], adjust(raw, correction))
        assert result.passed


def test_missing_labels_use_the_rows_that_have_them_and_say_so(tmp_path):
    data = chain()
    data["c"][::4] = np.nan  # 125 of 500 rows lose c
    data["a"][1::10] = np.nan  # 50 lose a, none of them also c (1 + 10k is odd, never a multiple of 4)
    both = ~np.isnan(data["a"]) & ~np.isnan(data["c"])
    result = check(read(write_labels(tmp_path / "d", data, ["ab", "bc"])))
    (implied,) = result.independences
    assert implied.rows == implied.tested_rows == int(both.sum())
    assert implied.p == pytest.approx(fisher_z(data["a"][both], data["c"][both], data["b"][both][:, None]), rel=1e-9)
    assert result.labelled == {"a": 450, "b": 500, "c": 375}
    text = graph_check.check_markdown(result)
    assert "labelled per variable: a 450, b 500, c 375" in text
    assert any(note.startswith("missing labels") for note in result.notes)


def test_a_variable_its_conditioning_set_determines_holds_trivially_where_fisher_z_misfires(tmp_path):
    """Pendulum's structure in miniature: s = a^2 + l and t = a^2 - l are functions of a and l. Given a and l,
    s ⟂ t holds trivially, but both linear residuals are a^2 - E[a^2]: Fisher-z sees correlation 1 and would
    reject. The check says "determined" and keeps it out of the corrected family."""
    rng = np.random.default_rng(2)
    a, light = rng.uniform(-1, 1, 1000), rng.uniform(-1, 1, 1000)
    folder = write_labels(tmp_path / "d", {"a": a, "l": light, "s": a ** 2 + light, "t": a ** 2 - light},
                          ["as", "ls", "at", "lt"])
    result = check(read(folder))
    marginal, determined = result.independences
    assert marginal.statement() == "a ⟂ l" and marginal.verdict == "holds"
    assert determined.statement() == "s ⟂ t given a, l" and determined.verdict == "determined"
    assert determined.p < 1e-10  # Fisher-z's misfire, shown, not hidden
    assert determined.p_adjusted is None and set(determined.determined) == {"s", "t"}
    assert min(determined.determined.values()) >= 0.99
    assert marginal.p_adjusted == marginal.p  # a family of one: the determined test is not in it
    assert result.passed
    text = graph_check.check_markdown(result)
    assert "independent trivially: s is a function of a, l" in text and "no CI test can judge it" in text


def test_kci_sees_a_nonlinear_dependence_that_fisher_z_misses(tmp_path):
    """y = x^2 + noise with x symmetric about 0: no correlation, strong dependence. A graph without the edge
    passes Fisher-z (its blind spot, which the notes name) and fails KCI, on a subsample of 150 of the 300 rows."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, 300)
    folder = write_labels(tmp_path / "d", {"x": x, "y": x ** 2 + 0.05 * rng.normal(size=300)})
    linear = check(read(folder))
    assert linear.passed and "sees linear dependence only" in linear.notes[0]
    kernel = check(read(folder), "kci", max_rows=150)
    (implied,) = kernel.independences
    assert (implied.rows, implied.tested_rows) == (300, 150)
    assert implied.verdict == "rejected" and kernel.argued_edges() == [("x", "y")]
    assert "150 of 300" in graph_check.check_markdown(kernel)


def test_levels_constants_and_columns_outside_the_graph_are_noted(tmp_path):
    rng = np.random.default_rng(4)
    folder = write_labels(tmp_path / "d", {"level": rng.integers(0, 4, 100).astype(float), "const": np.ones(100),
                                           "x": rng.normal(size=100), "digit": rng.integers(0, 10, 100)})
    (folder / "graph.yaml").write_text(yaml.safe_dump({"variables": ["level", "const", "x"], "edges": []}))
    result = check(read(folder))
    assert read(folder).other_columns == ("digit",)
    assert any(n.startswith("labels.csv columns outside the graph are not tested: digit") for n in result.notes)
    assert any("level takes 4 distinct values" in n for n in result.notes)
    assert any("const is constant" in n for n in result.notes)
    # a constant is independent of anything: its tests hold (it is determined by the empty set too)
    assert all(i.verdict in ("holds", "determined") for i in result.independences if "const" in (i.x, i.y))


# -- suggest ---------------------------------------------------------------------------------------------------------
def test_pc_finds_the_collider_oriented_and_the_chain_unoriented(tmp_path):
    """A collider's orientation is identified (a ⟂ c, not given b); a chain's is not (its Markov equivalence class
    holds a -> b -> c, a <- b <- c and a <- b -> c)."""
    found = suggest(read(write_labels(tmp_path / "col", collider(), ["ab", "cb"])))
    assert found.found == (("a", "b", "->"), ("c", "b", "->"))
    assert [c["agreement"] for c in found.comparison()] == ["in both, same direction"] * 2
    found = suggest(read(write_labels(tmp_path / "chain", chain(), ["ab", "bc"])))
    assert found.found == (("a", "b", "--"), ("b", "c", "--"))
    assert {c["agreement"] for c in found.comparison()} == {"in both; the data do not orient it (either direction "
                                                            "fits)"}


def test_suggest_names_edges_only_in_one_graph_and_reversed_ones(tmp_path):
    """Collider data a -> b <- c under the graph b -> a, a -> c: b -> a reversed, a -> c not in the data, c -> b
    only in the data's."""
    found = suggest(read(write_labels(tmp_path / "d", collider(), ["ba", "ac"])))
    rows = {(c["yours"], c["data"]): c["agreement"] for c in found.comparison()}
    assert rows == {("b -> a", "a -> b"): "in both, reversed",
                    ("a -> c", ""): "only in yours: the data find the pair independent given some set",
                    ("", "c -> b"): "only in the data's: your graph leaves them unconnected"}
    text = graph_check.suggest_markdown(found)
    assert "| b -> a | a -> b | in both, reversed |" in text


# -- the built-in datasets, labels exactly as their generators write them ------------------------------------------
@pytest.fixture(scope="module")
def pendulum_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = pendulum.samples()
    columns = {v: [r[v] for r in rows] for v in pendulum.VARIABLES}
    folder = write_labels(tmp_path_factory.mktemp("pendulum"), columns, splits=[r["split"] for r in rows])
    (folder / "graph.yaml").write_text(yaml.safe_dump(pendulum.GRAPH))
    return folder


@pytest.fixture(scope="module")
def morphomnist_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 5,000 (thickness, intensity) draws of `causaldiffae data morphomnist` (seed 0), and its graph."""
    scm = morphomnist.sample_scm(5000, np.random.default_rng(0))
    folder = write_labels(tmp_path_factory.mktemp("morphomnist"), scm)
    (folder / "graph.yaml").write_text(yaml.safe_dump(morphomnist.GRAPH))
    return folder


@pytest.mark.parametrize("test", ["fisherz", "kci"])
def test_pendulum_passes_its_check(pendulum_labels, test):
    """angle and light span a full grid, so angle ⟂ light holds exactly (Fisher-z: correlation 0, p = 1); the
    shadows are functions of angle and light, so their independence given both holds trivially."""
    result = check(read(pendulum_labels), test, max_rows=500)  # KCI on 500 rows per test: seconds
    marginal, shadows = result.independences
    assert marginal.statement() == "angle ⟂ light" and marginal.verdict == "holds"
    if test == "fisherz":
        assert marginal.p == pytest.approx(1.0)
    assert shadows.verdict == "determined" and shadows.p_adjusted is None
    assert all(e.verdict == "supported" for e in result.edges)
    assert result.passed


def test_morphomnist_passes_and_without_its_edge_is_flagged(morphomnist_labels, tmp_path):
    result = check(read(morphomnist_labels))
    assert result.independences == () and result.passed  # two connected variables imply nothing
    (edge,) = result.edges
    assert (edge.x, edge.y, edge.verdict) == ("thickness", "intensity", "supported")
    unconnected = tmp_path / "graph.yaml"
    unconnected.write_text(yaml.safe_dump({"variables": ["thickness", "intensity"], "edges": []}))
    for test in ("fisherz", "kci"):
        flagged = check(read(morphomnist_labels, graph_file=unconnected), test)
        assert not flagged.passed and flagged.argued_edges() == [("thickness", "intensity")]


# -- the command line ----------------------------------------------------------------------------------------------
def test_cli_check_writes_its_reports_and_exits_1_on_a_contradiction(tmp_path, capsys):
    folder = write_labels(tmp_path / "d", chain(), ["ab", "cb"])
    assert exit_code(["graph", "check", str(folder), "--out", str(tmp_path / "out")]) == 1
    assert "FAIL" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "graph-check.json").read_text())
    assert report["passed"] is False and report["argued_edges"] == [["a", "c"]]
    assert report["correction_name"] == "Holm"
    assert (tmp_path / "out" / "graph-check.md").read_text().startswith("# Graph check")
    fixed = tmp_path / "chain.yaml"
    fixed.write_text(yaml.safe_dump({"variables": ["a", "b", "c"], "edges": [["a", "b"], ["b", "c"]]}))
    assert exit_code(["graph", "check", str(folder), "--graph", str(fixed), "--correction", "bh"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_cli_kci_on_one_split_with_small_conditioning_sets(tmp_path):
    """Three unconnected variables, 120 rows of which 60 are train: --max-given 0 keeps the three marginal
    independences, --split train the 60 rows, --kci-rows 40 a subsample of them."""
    rng = np.random.default_rng(5)
    folder = write_labels(tmp_path / "d", {v: rng.normal(size=120) for v in "xyz"}, splits=["train", "test"] * 60)
    assert exit_code(["graph", "check", str(folder), "--test", "kci", "--kci-rows", "40", "--max-given", "0",
                      "--split", "train", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "graph-check.json").read_text())
    assert [(i["x"], i["y"], i["given"]) for i in report["independences"]] == [("x", "y", []), ("x", "z", []),
                                                                               ("y", "z", [])]
    assert {(i["rows"], i["tested_rows"]) for i in report["independences"]} == {(60, 40)}
    assert report["split"] == "train" and report["rows"] == 60 and report["test"] == "kci"


def test_cli_suggest_prints_both_graphs(tmp_path, capsys):
    folder = write_labels(tmp_path / "d", collider(), ["ab", "cb"])
    assert exit_code(["graph", "suggest", str(folder), "--alpha", "0.01", "--out", str(tmp_path / "out")]) == 0
    assert "| a -> b | a -> b | in both, same direction |" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "graph-suggest.json").read_text())
    assert report["found"] == [["a", "b", "->"], ["c", "b", "->"]] and report["alpha"] == 0.01


def test_cli_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert exit_code(["graph", "check", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"causaldiffae: error: dataset folder not found: {tmp_path / 'nope'}"

    folder = write_labels(tmp_path / "d", chain(), ["ab", "bc"])
    (folder / "graph.yaml").write_text(yaml.safe_dump({"variables": ["a", "b", "size"], "edges": [["a", "b"]]}))
    assert exit_code(["graph", "check", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "labels.csv: no column for size" in err

    few = write_labels(tmp_path / "few", chain(n=8), ["ab", "bc"])
    assert exit_code(["graph", "suggest", str(few)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "too few labelled rows" in err and "at least 10" in err

    assert exit_code(["graph", "check", str(folder), "--alpha", "1.5"]) == 2  # argparse: usage and exit 2
    assert "must lie in (0, 1)" in capsys.readouterr().err

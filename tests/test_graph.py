"""CausalGraph: construction from dicts/YAML, queries, normalisation, and the errors a user sees."""

from __future__ import annotations

import pytest
import yaml

from causaldiffae.data import pendulum
from causaldiffae.graph import CausalGraph, Variable

# File order deliberately differs from a topological order: 'c' is listed first but depends on 'b'.
DIAMOND = {
    "variables": [
        {"name": "d", "units": "m", "normalization": {"mean": 2.0, "std": 4.0}},
        {"name": "b", "normalization": {"min": -3.0, "max": 5.0}},
        {"name": "a", "description": "root", "range": [0, 10]},
        "c",
    ],
    "edges": [["a", "b"], ["a", "c"], ["b", "d"], ["c", "d"]],
}


@pytest.fixture
def diamond() -> CausalGraph:
    return CausalGraph.from_dict(DIAMOND)


def test_variables_keep_file_order(diamond):
    assert diamond.variables == ["d", "b", "a", "c"]
    assert len(diamond) == 4
    assert diamond.index("a") == 2


def test_topological_order_respects_edges_and_breaks_ties_by_file_order(diamond):
    order = diamond.topological_order()
    assert order == ["a", "b", "c", "d"]
    for parent, child in diamond.edges:
        assert order.index(parent) < order.index(child)


def test_topological_order_of_independent_variables_is_file_order():
    graph = CausalGraph.from_dict({"variables": ["z", "y", "x"]})
    assert graph.topological_order() == ["z", "y", "x"]


def test_parents_children_descendants(diamond):
    assert diamond.parents("d") == ["b", "c"]
    assert diamond.parents("a") == []
    assert diamond.children("a") == ["b", "c"]
    assert diamond.descendants("a") == ["b", "c", "d"]
    assert diamond.descendants("b") == ["d"]
    assert diamond.descendants("d") == []
    assert diamond.affected(["b"]) == {"b", "d"}


def test_queries_on_unknown_variable_name_it(diamond):
    with pytest.raises(ValueError, match="'nope'") as err:
        diamond.parents("nope")
    assert "['d', 'b', 'a', 'c']" in str(err.value)


def test_adjacency_rows_are_parents(diamond):
    names = diamond.variables
    matrix = diamond.adjacency()
    expected = [[0] * 4 for _ in names]
    for parent, child in DIAMOND["edges"]:
        expected[names.index(parent)][names.index(child)] = 1
    assert matrix == expected
    # a -> b: row a, column b; never the transpose
    assert matrix[names.index("a")][names.index("b")] == 1
    assert matrix[names.index("b")][names.index("a")] == 0


def test_pendulum_graph_adjacency():
    graph = CausalGraph.from_dict(pendulum.GRAPH)
    assert graph.variables == list(pendulum.VARIABLES)
    assert graph.adjacency() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_to_dict_round_trip(diamond):
    data = diamond.to_dict()
    again = CausalGraph.from_dict(data)
    assert again == diamond
    assert again.to_dict() == data
    # survives YAML too (what graph.yaml and config.yaml hold)
    assert CausalGraph.from_dict(yaml.safe_load(yaml.safe_dump(data))) == diamond
    assert data["variables"][2] == {"name": "a", "description": "root", "range": [0.0, 10.0]}


def test_from_yaml(tmp_path, diamond):
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(DIAMOND))
    assert CausalGraph.from_yaml(path) == diamond


def test_from_yaml_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        CausalGraph.from_yaml(tmp_path / "missing.yaml")


def test_from_yaml_error_names_the_file(tmp_path):
    path = tmp_path / "cyclic.yaml"
    path.write_text(yaml.safe_dump({"variables": ["a", "b"], "edges": [["a", "b"], ["b", "a"]]}))
    with pytest.raises(ValueError, match="cyclic.yaml") as err:
        CausalGraph.from_yaml(path)
    assert "cycle" in str(err.value)


def test_normalize_mean_std(diamond):
    var = diamond["d"]
    assert var.normalize(6.0) == pytest.approx(1.0)
    assert var.normalize(2.0) == pytest.approx(0.0)
    assert var.denormalize(-1.0) == pytest.approx(-2.0)
    assert var.denormalize(var.normalize(3.7)) == pytest.approx(3.7)


def test_normalize_min_max_maps_range_to_minus_one_one(diamond):
    var = diamond["b"]
    assert var.normalize(-3.0) == pytest.approx(-1.0)
    assert var.normalize(5.0) == pytest.approx(1.0)
    assert var.normalize(1.0) == pytest.approx(0.0)
    assert var.denormalize(0.5) == pytest.approx(3.0)


def test_normalize_without_normalization_names_the_variable(diamond):
    with pytest.raises(ValueError, match="'c'"):
        diamond["c"].normalize(1.0)


def test_with_normalization_only_changes_named_variables(diamond):
    graph = diamond.with_normalization({"c": {"mean": 1.0, "std": 2.0}})
    assert graph["c"].normalize(3.0) == pytest.approx(1.0)
    assert graph["d"] == diamond["d"]
    assert graph.edges == diamond.edges


# -- errors ------------------------------------------------------------------------------------------


def _error(data) -> str:
    with pytest.raises(ValueError) as err:
        CausalGraph.from_dict(data)
    return str(err.value)


def test_unknown_variable_in_edge_is_named():
    msg = _error({"variables": ["a", "b"], "edges": [["a", "ghost"]]})
    assert "'ghost'" in msg


def test_duplicate_variable_is_named():
    msg = _error({"variables": ["a", "twin", "twin"]})
    assert "duplicate" in msg and "'twin'" in msg


def test_self_loop_is_named():
    msg = _error({"variables": ["a", "loopy"], "edges": [["loopy", "loopy"]]})
    assert "self-loop" in msg and "'loopy'" in msg


def test_cycle_message_lists_the_cycle():
    msg = _error({"variables": ["a", "b", "c"], "edges": [["a", "b"], ["b", "c"], ["c", "a"]]})
    assert "cycle" in msg
    assert "a -> b -> c -> a" in msg


def test_cycle_message_lists_only_the_cycle_not_its_descendants():
    # x is a root, y -> z -> y is the cycle, w hangs below it; only y and z form the cycle
    msg = _error({"variables": ["w", "x", "y", "z"],
                  "edges": [["x", "y"], ["y", "z"], ["z", "y"], ["z", "w"]]})
    cycle = msg.split("cycle:")[1].strip()
    names = [s.strip() for s in cycle.split("->")]
    assert names[0] == names[-1]
    assert set(names) == {"y", "z"}


@pytest.mark.parametrize("data", [{}, {"variables": []}, {"variables": [], "edges": []}])
def test_empty_graph(data):
    assert "empty" in _error(data)


@pytest.mark.parametrize(
    "norm, words",
    [
        ({"mean": 1.0}, ["mean/std"]),
        ({"mean": 1.0, "scale": 2.0}, ["scale"]),
        ({"min": 0.0, "max": 1.0, "mean": 0.5}, ["mean"]),
        ({"mean": 0.0, "std": 0.0}, ["std"]),
        ({"min": 2.0, "max": 1.0}, ["min < max"]),
        ({"mean": "x", "std": 1.0}, ["number"]),
    ],
)
def test_bad_normalization_names_variable(norm, words):
    msg = _error({"variables": [{"name": "speed", "normalization": norm}]})
    assert "'speed'" in msg
    for word in words:
        assert word in msg


def test_unknown_key_in_variable_is_named():
    msg = _error({"variables": [{"name": "speed", "unit": "m/s"}]})
    assert "'speed'" in msg and "unit" in msg


def test_unknown_top_level_key_is_named():
    msg = _error({"variables": ["a"], "edge": [["a", "a"]]})
    assert "edge" in msg


def test_duplicate_edge_is_rejected():
    assert "twice" in _error({"variables": ["a", "b"], "edges": [["a", "b"], ["a", "b"]]})


def test_bad_range_is_rejected():
    assert "'a'" in _error({"variables": [{"name": "a", "range": [3, 1]}]})


def test_variable_needs_a_name():
    with pytest.raises(ValueError):
        Variable("  ")


def test_label_normalisation_of_the_whole_graph_by_hand():
    """a: min 0 / max 10 (centre 5, half-width 5); b: mean 2 / std 4. NaN, a missing label, stays NaN."""
    import torch

    graph = CausalGraph.from_dict({"variables": [{"name": "a", "normalization": {"min": 0, "max": 10}},
                                                 {"name": "b", "normalization": {"mean": 2, "std": 4}}],
                                   "edges": [["a", "b"]]})
    labels = torch.tensor([[5.0, 6.0], [float("nan"), -2.0], [10.0, 2.0]])
    expected = torch.tensor([[0.0, 1.0], [float("nan"), -1.0], [1.0, 0.0]])
    torch.testing.assert_close(graph.normalize(labels), expected, equal_nan=True)
    torch.testing.assert_close(graph.denormalize(expected), labels, equal_nan=True)
    assert graph.normalize(labels.double()).dtype == torch.float64
    with pytest.raises(ValueError, match=r"labels have 3 columns; the graph has 2 variables \(a, b\)"):
        graph.normalize(torch.zeros(4, 3))


def test_labels_by_name_and_back(diamond):
    import torch

    columns = torch.arange(8.0).reshape(2, len(diamond.variables))
    named = diamond.named(columns)
    assert list(named) == diamond.variables
    assert named[diamond.variables[1]].tolist() == [1.0, 5.0]
    assert torch.equal(diamond.stacked(named), columns)
    with pytest.raises(ValueError, match="missing"):
        diamond.stacked({diamond.variables[0]: torch.zeros(2)})
    with pytest.raises(ValueError, match="columns"):
        diamond.named(torch.zeros(2, 3))


# -- d-separation: known answers on the four elementary structures and on graphs that combine them ------------------
def _graph(*edges: str, variables: str = "") -> CausalGraph:
    """A graph from edges written 'ab' (a -> b); variables in order of first mention, then ``variables``."""
    names = list(dict.fromkeys([*"".join(edges), *variables]))
    return CausalGraph.from_dict({"variables": names, "edges": [list(e) for e in edges]})


@pytest.mark.parametrize(("edges", "given", "separated"), [
    (("ab", "bc"), "", False),   # chain a -> b -> c: the path is open
    (("ab", "bc"), "b", True),   # ... and blocked by its middle node
    (("ba", "bc"), "", False),   # fork a <- b -> c: the common cause connects them
    (("ba", "bc"), "b", True),   # ... until it is given
    (("ab", "cb"), "", True),    # collider a -> b <- c: blocked as long as nothing is given
    (("ab", "cb"), "b", False),  # ... given the collider, opened (explaining away)
    (("ab", "cb", "bd"), "d", False),  # ... and given a descendant of the collider
    (("ab", "cb", "bd"), "", True),
])
def test_d_separation_of_a_and_c(edges, given, separated):
    graph = _graph(*edges)
    assert graph.d_separated("a", "c", given) is separated
    assert graph.d_separated("c", "a", given) is separated  # symmetric


def test_d_separation_on_the_diamond(diamond):
    """a -> b -> d, a -> c -> d: b and c share the cause a and the effect d."""
    assert not diamond.d_separated("b", "c")
    assert diamond.d_separated("b", "c", ["a"])
    assert not diamond.d_separated("b", "c", ["a", "d"])  # d is a collider of b and c
    assert diamond.d_separated("a", "d", ["b", "c"])
    assert not diamond.d_separated("a", "d", ["b"])  # a -> c -> d stays open


def test_d_separation_through_a_collider_opened_and_a_chain_blocked():
    """a -> b <- c -> d: given b the collider opens a - c, and c then leads on to d; given b and c, blocked again."""
    graph = _graph("ab", "cb", "cd")
    assert graph.d_separated("a", "d")
    assert not graph.d_separated("a", "d", ["b"])
    assert graph.d_separated("a", "d", ["b", "c"])
    chain = _graph("ab", "bc", "cd")  # a longer chain: any node of it blocks it
    assert not chain.d_separated("a", "d")
    assert chain.d_separated("a", "d", ["b"]) and chain.d_separated("a", "d", ["c"])


def test_unconnected_variables_are_separated_by_anything():
    graph = _graph("ab", variables="c")
    assert graph.d_separated("a", "c") and graph.d_separated("a", "c", ["b"])


def test_d_separation_refuses_a_variable_given_or_repeated(diamond):
    with pytest.raises(ValueError, match="two different variables"):
        diamond.d_separated("a", "a")
    with pytest.raises(ValueError, match="two different variables"):
        diamond.d_separated("a", "d", ["a"])
    with pytest.raises(ValueError, match="'nope'"):
        diamond.d_separated("a", "d", ["nope"])


def test_implied_independences_of_pendulum_and_the_diamond(diamond):
    pendulum_graph = CausalGraph.from_dict(pendulum.GRAPH)
    assert pendulum_graph.implied_independences() == [
        ("angle", "light", ()), ("shadow_length", "shadow_position", ("angle", "light"))]
    # file order d, b, a, c: d and a are separated by b and c together, b and c by a alone
    assert diamond.implied_independences() == [("d", "a", ("b", "c")), ("b", "c", ("a",))]
    assert diamond.implied_independences(max_given=1) == [("b", "c", ("a",))]
    assert CausalGraph.from_dict({"variables": ["x", "y"], "edges": [["x", "y"]]}).implied_independences() == []
    # three unconnected variables: every pair, given nothing and given the third
    assert _graph(variables="abc").implied_independences() == [
        ("a", "b", ()), ("a", "b", ("c",)), ("a", "c", ()), ("a", "c", ("b",)), ("b", "c", ()), ("b", "c", ("a",))]

"""CausalLayer: the latent SCM z = f(z_pa) + u; do() changes only the intervened block's descendants."""

from __future__ import annotations

import pytest
import torch

from causaldiffae.causal_layer import CausalLayer
from causaldiffae.graph import CausalGraph

DIM = 3
CHAIN = CausalGraph.from_dict({"variables": ["a", "b", "c"], "edges": [["a", "b"], ["b", "c"]]})
DIAMOND = CausalGraph.from_dict(
    {"variables": ["a", "b", "c", "d"], "edges": [["a", "b"], ["a", "c"], ["b", "d"], ["c", "d"]]}
)


def _layer(graph: CausalGraph, seed: int = 0) -> CausalLayer:
    torch.manual_seed(seed)
    return CausalLayer(graph, DIM, hidden=16).eval()


def _u(graph: CausalGraph, batch: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, len(graph), DIM, generator=torch.Generator().manual_seed(seed))


def _block(z: torch.Tensor, graph: CausalGraph, name: str) -> torch.Tensor:
    return z[:, graph.index(name)]


def test_output_shape_and_roots_equal_u():
    layer, u = _layer(CHAIN), _u(CHAIN)
    z = layer(u)
    assert z.shape == u.shape
    assert torch.equal(z[:, 0], u[:, 0])  # a is a root: z_a = u_a
    assert not torch.allclose(z[:, 1], u[:, 1])  # b = f_b(z_a) + u_b


def test_only_non_roots_have_mechanisms():
    assert set(_layer(DIAMOND).mechanisms) == {"b", "c", "d"}


def test_child_is_mechanism_of_parent_plus_u():
    layer, u = _layer(CHAIN), _u(CHAIN)
    z = layer(u)
    with torch.no_grad():
        expected_b = layer.mechanisms["b"](z[:, 0]) + u[:, 1]
        expected_c = layer.mechanisms["c"](z[:, 1]) + u[:, 2]
    torch.testing.assert_close(z[:, 1], expected_b)
    torch.testing.assert_close(z[:, 2], expected_c)


def test_do_root_moves_all_descendants():
    layer, u = _layer(CHAIN), _u(CHAIN)
    z = layer(u)
    value = torch.full((DIM,), 2.5)
    cf = layer(u, do={"a": value})
    assert torch.equal(_block(cf, CHAIN, "a"), value.expand(u.shape[0], DIM))
    assert not torch.allclose(_block(cf, CHAIN, "b"), _block(z, CHAIN, "b"))
    # depth > 1: a is not c's parent, but do(a) must reach c through b
    assert not torch.allclose(_block(cf, CHAIN, "c"), _block(z, CHAIN, "c"))


def test_do_leaf_leaves_ancestors_bit_identical():
    layer, u = _layer(CHAIN), _u(CHAIN)
    z = layer(u)
    value = torch.randn(u.shape[0], DIM)
    cf = layer(u, do={"c": value})
    assert torch.equal(cf[:, 0], z[:, 0])
    assert torch.equal(cf[:, 1], z[:, 1])
    assert torch.equal(cf[:, 2], value)


def test_do_middle_keeps_parent_and_moves_child():
    layer, u = _layer(CHAIN), _u(CHAIN)
    z = layer(u)
    cf = layer(u, do={"b": torch.zeros(DIM)})
    assert torch.equal(cf[:, 0], z[:, 0])
    assert torch.equal(cf[:, 1], torch.zeros(u.shape[0], DIM))
    assert not torch.allclose(cf[:, 2], z[:, 2])
    # the child is recomputed with the same u: c = f_c(new b) + u_c
    with torch.no_grad():
        torch.testing.assert_close(cf[:, 2], layer.mechanisms["c"](cf[:, 1]) + u[:, 2])


def test_do_with_given_factual_copies_unaffected_blocks():
    layer, u = _layer(CHAIN), _u(CHAIN)
    factual = layer(u)
    cf = layer(u, do={"c": torch.ones(DIM)}, factual=factual)
    assert torch.equal(cf[:, :2], factual[:, :2])


def test_diamond_do_b_moves_d_only():
    layer, u = _layer(DIAMOND), _u(DIAMOND)
    z = layer(u)
    cf = layer(u, do={"b": torch.full((DIM,), -1.0)})
    assert torch.equal(_block(cf, DIAMOND, "a"), _block(z, DIAMOND, "a"))
    assert torch.equal(_block(cf, DIAMOND, "c"), _block(z, DIAMOND, "c"))
    assert not torch.allclose(_block(cf, DIAMOND, "d"), _block(z, DIAMOND, "d"))


def test_do_two_variables_at_once():
    layer, u = _layer(DIAMOND), _u(DIAMOND)
    z = layer(u)
    cf = layer(u, do={"b": torch.ones(DIM), "c": -torch.ones(DIM)})
    assert torch.equal(_block(cf, DIAMOND, "a"), _block(z, DIAMOND, "a"))
    assert torch.equal(_block(cf, DIAMOND, "c"), -torch.ones(u.shape[0], DIM))
    assert not torch.allclose(_block(cf, DIAMOND, "d"), _block(z, DIAMOND, "d"))


def test_do_with_factual_value_reproduces_factual():
    layer, u = _layer(CHAIN), _u(CHAIN)
    z = layer(u)
    cf = layer(u, do={"a": z[:, 0].clone()})
    torch.testing.assert_close(cf, z)


@pytest.mark.parametrize(
    "graph, perturbed, unchanged",
    [
        (CHAIN, "c", ["a", "b"]),  # a descendant's noise never flows upstream
        (DIAMOND, "b", ["a", "c"]),  # c's mechanism sees a only, not its sibling b
        (DIAMOND, "c", ["a", "b"]),
    ],
)
def test_mechanisms_only_see_their_parents(graph, perturbed, unchanged):
    layer, u = _layer(graph), _u(graph)
    z = layer(u)
    u2 = u.clone()
    u2[:, graph.index(perturbed)] += 3.0
    z2 = layer(u2)
    for name in unchanged:
        assert torch.equal(_block(z2, graph, name), _block(z, graph, name)), name
    assert not torch.allclose(_block(z2, graph, perturbed), _block(z, graph, perturbed))


def test_diamond_d_depends_on_both_parents():
    layer, u = _layer(DIAMOND), _u(DIAMOND)
    z = layer(u)
    for parent in ["b", "c"]:
        u2 = u.clone()
        u2[:, DIAMOND.index(parent)] += 3.0
        assert not torch.allclose(_block(layer(u2), DIAMOND, "d"), _block(z, DIAMOND, "d")), parent


def test_unknown_do_name_is_named():
    layer, u = _layer(CHAIN), _u(CHAIN)
    with pytest.raises(ValueError, match="'ghost'"):
        layer(u, do={"ghost": torch.zeros(DIM)})


@pytest.mark.parametrize("shape", [(5, 3, 4), (5, 2, 3), (5, 9), (3, 3)])
def test_wrong_u_shape(shape):
    layer = _layer(CHAIN)
    with pytest.raises(ValueError, match=r"\(B, 3, 3\)"):
        layer(torch.zeros(shape))

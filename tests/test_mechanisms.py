"""Label mechanisms: exact abduction of each child's noise, checked against SCMs whose counterfactuals are known in
closed form (linear-Gaussian, a sigmoid with the noise inside as MorphoMNIST's intensity, a three-level chain)."""

from __future__ import annotations

import math

import pytest
import torch

from causaldiffae import spline
from causaldiffae.causal_layer import CausalLayer
from causaldiffae.graph import CausalGraph
from causaldiffae.mechanisms import MechanismSet


def _graph(names: list[str], edges: list[list[str]]) -> CausalGraph:
    return CausalGraph.from_dict({"variables": [{"name": n, "normalization": {"mean": 0.0, "std": 1.0}}
                                                for n in names], "edges": edges})


def _uniform(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * 4 - 2


def test_spline_is_the_identity_at_zero_parameters_and_inverts_exactly() -> None:
    xk, yk, slopes = spline.knots(torch.zeros(8), torch.zeros(8), torch.zeros(7), -2.0, 3.0)
    x = torch.linspace(-4, 5, 301)
    y, logdet = spline.transform(x, xk, yk, slopes)
    assert torch.allclose(y, x, atol=1e-5) and torch.allclose(logdet, torch.zeros_like(x), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    xk, yk, slopes = spline.knots(torch.randn(8, generator=g), torch.randn(8, generator=g),
                                  torch.randn(7, generator=g), -2.0, 3.0)
    x = torch.linspace(-4, 5, 301, requires_grad=True)
    y, logdet = spline.transform(x, xk, yk, slopes)
    back, logdet_inverse = spline.transform(y, xk, yk, slopes, inverse=True)
    assert torch.allclose(back, x, atol=1e-4)
    assert torch.allclose(logdet, -logdet_inverse, atol=1e-4)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(grad.log(), logdet, atol=1e-4)  # the log-derivative the likelihood uses
    assert (grad > 0).all()  # monotone: one noise value per label


@pytest.mark.parametrize("family", ["affine", "spline"])
def test_linear_gaussian_counterfactual(family: str) -> None:
    """x ~ N(0, 1), y = 2 x + 0.5 e: under do(x = x') the counterfactual is y' = y + 2 (x' - x), whatever e."""
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2000, generator=g), torch.randn(2000, generator=g)
    y = 2 * x + 0.5 * e
    mechanisms = MechanismSet(_graph(["x", "y"], [["x", "y"]]), family)
    (fit,) = mechanisms.fit(torch.stack([x, y], 1), steps=500)
    assert fit.rows == 2000 and fit.r2 == pytest.approx(4 / 4.25, abs=0.015)  # Var(2x) / Var(y)
    assert fit.spread == pytest.approx(0.5, abs=0.05)
    new_x = x.flip(0)
    cf = mechanisms.counterfactual(torch.stack([x, y], 1), {"x": new_x})
    assert torch.equal(cf[:, 0], new_x)
    assert (cf[:, 1] - (y + 2 * (new_x - x))).abs().mean() < 0.05


def test_noise_inside_a_sigmoid_needs_the_spline() -> None:
    """y = 4 sigmoid(2 t + e) - 2, the form of MorphoMNIST's intensity: the exact counterfactual keeps e, so
    y' = 4 sigmoid(2 t' + e) - 2; an additive residual y - f(t) cannot keep it."""
    g = torch.Generator().manual_seed(0)
    t, e = _uniform(2000, g), torch.randn(2000, generator=g)
    y = 4 * torch.sigmoid(2 * t + e) - 2
    new_t = _uniform(2000, g)
    truth = 4 * torch.sigmoid(2 * new_t + e) - 2
    labels, graph = torch.stack([t, y], 1), _graph(["t", "y"], [["t", "y"]])
    errors = {}
    for family in ("additive", "spline"):
        mechanisms = MechanismSet(graph, family)
        mechanisms.fit(labels, steps=500)
        errors[family] = float((mechanisms.counterfactual(labels, {"t": new_t})[:, 1] - truth).abs().mean())
    no_op = float((y - truth).abs().mean())
    assert errors["spline"] < 0.03 * no_op  # 0.023 of 1.55 measured
    assert errors["additive"] > 5 * errors["spline"]  # 0.27 measured


def _chain_data(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, eb, ec = torch.randn(n, generator=g), torch.randn(n, generator=g), torch.randn(n, generator=g)
    b = a + 0.5 * eb
    c = torch.tanh(b + 0.5 * ec)
    return torch.stack([a, b, c], 1), torch.stack([eb, ec], 1)


def test_three_level_chain_moves_the_grandchild_through_the_child() -> None:
    """a -> b -> c with b = a + 0.5 e_b and c = tanh(b + 0.5 e_c): under do(a = a'), b' = b + (a' - a) and
    c' = tanh(atanh(c) + a' - a). Through the label-space SCM and through the causal layer's latent blocks."""
    g = torch.Generator().manual_seed(1)
    graph = _graph(["a", "b", "c"], [["a", "b"], ["b", "c"]])
    layer = CausalLayer(graph, dim=3, hidden=8, label_mechanism="spline")
    labels, _ = _chain_data(g, 3000)
    layer.labels.fit(labels, steps=500)
    factual, _ = _chain_data(g, 500)
    factual = factual[factual[:, 2].abs() < 0.95]  # away from tanh's flat ends, where atanh amplifies any error
    new_a = torch.randn(len(factual), generator=g)
    shift = new_a - factual[:, 0]
    truth_b = factual[:, 1] + shift
    truth_c = torch.tanh(torch.atanh(factual[:, 2]) + shift)
    cf = layer.labels.counterfactual(factual, {"a": new_a})
    assert (cf[:, 1] - truth_b).abs().mean() < 0.03
    assert (cf[:, 2] - truth_c).abs().mean() < 0.03
    assert (factual[:, 2] - truth_c).abs().mean() > 0.2  # the no-op floor: the test can fail
    # the latent blocks: each block is its label over a style pattern with mean 0; do() moves the grandchild's
    # block along the label direction and keeps the pattern
    style = torch.tensor([0.3, -0.1, -0.2])
    z = factual[:, :, None] + style
    z_cf = layer(torch.zeros_like(z), do={"a": new_a[:, None].expand(-1, 3)}, factual=z)
    assert torch.allclose(z_cf.mean(-1)[:, 1:], cf[:, 1:], atol=1e-5)
    assert torch.allclose(z_cf[:, 2] - z_cf[:, 2].mean(-1, keepdim=True), style.expand(len(z), 3), atol=1e-5)


def test_known_labels_replace_the_reading_in_the_abduction() -> None:
    """A block whose reading is off by delta: with the true labels given, the child moves by the true change."""
    g = torch.Generator().manual_seed(2)
    graph = _graph(["x", "y"], [["x", "y"]])
    layer = CausalLayer(graph, dim=2, hidden=8, label_mechanism="affine")
    x = torch.randn(2000, generator=g)
    layer.labels.fit(torch.stack([x, 3 * x + 0.2 * torch.randn(2000, generator=g)], 1), steps=500)
    true = torch.tensor([[0.5, 1.6]])
    read = true + torch.tensor([[0.2, 0.0]])  # the reading of x is 0.2 too high
    z = read[:, :, None].expand(-1, -1, 2)
    do = {"x": torch.full((1, 2), 1.5)}
    from_reading = layer(torch.zeros_like(z), do=do, factual=z).mean(-1)[0, 1]
    from_known = layer(torch.zeros_like(z), do=do, factual=z, known=true).mean(-1)[0, 1]
    assert float(from_known) == pytest.approx(1.6 + 3 * (1.5 - 0.5), abs=0.05)
    assert float(from_reading) == pytest.approx(1.6 + 3 * (1.5 - 0.7), abs=0.05)


def test_weak_supervision_fits_on_the_complete_rows_only() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, generator=g)
    labels = torch.stack([x, 2 * x + 0.1 * torch.randn(400, generator=g)], 1)
    labels[:100, 0] = math.nan  # parent missing
    labels[100:250, 1] = math.nan  # child missing
    mechanisms = MechanismSet(_graph(["x", "y"], [["x", "y"]]), "affine")
    (fit,) = mechanisms.fit(labels, steps=300)
    assert fit.rows == 150
    assert fit.deterministic  # R^2 0.998: its parent determines it
    labels[:, 1] = math.nan
    (fit,) = mechanisms.fit(labels, steps=10)
    assert fit.rows == 0 and not fit.fitted and mechanisms.fitted("y") is None
    assert "not fitted" in fit.line()

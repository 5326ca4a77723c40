"""The UNet's prediction target: epsilon or v (model.prediction), checked against stubs that know the answer."""

from __future__ import annotations

import pytest
import torch

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.training import load_run_config
from conftest import AB_GRAPH, ab_model


def _model(prediction: str) -> CausalDiffAE:
    return ab_model(prediction=prediction, p_uncond=0.0).train()


class Oracle(torch.nn.Module):
    """A UNet stand-in that knows the clean batch x0: from x_t = a x0 + s eps it returns the exact target."""

    def __init__(self, schedule, x0: torch.Tensor, target: str, scale: float = 1.0) -> None:
        super().__init__()
        self.schedule, self.x0, self.target, self.scale = schedule, x0, target, scale

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ab = self.schedule.alpha_bar(t, x_t)
        eps = (x_t - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        out = eps if self.target == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * self.x0
        return self.scale * out


class Constant(torch.nn.Module):
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x_t, 0.5)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_the_exact_target_has_zero_loss_and_the_other_does_not(prediction):
    model = _model(prediction)
    batch = {"image": torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)),
             "labels": torch.rand(6, 2)}
    x0 = batch["image"] * 2 - 1
    model.unet = Oracle(model.schedule, x0, prediction)
    assert model.loss(batch)["mse"].item() < 1e-8
    other = "v" if prediction == "epsilon" else "epsilon"
    model.unet = Oracle(model.schedule, x0, other)
    assert model.loss(batch)["mse"].item() > 1e-2


def test_a_v_model_hands_the_samplers_the_noise():
    """eps = sqrt(ab) v + sqrt(1 - ab) x_t: with the exact v the model's eps is the exact noise at every t, so the
    predicted x0 of any sampler is the clean image."""
    model = _model("v")
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    noise = torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 30, 70, 99])
    x_t = model.schedule.add_noise(x0, noise, t)
    model.unet = Oracle(model.schedule, x0, "v")
    torch.testing.assert_close(model.eps(x_t, t, torch.zeros(4, 4)), noise, rtol=1e-4, atol=1e-4)
    # a constant output c: eps = sqrt(ab) c + sqrt(1 - ab) x_t, worked out by hand at t = 99
    model.unet = Constant()
    ab = float(model.schedule.alphas_cumprod[99])
    expected = ab**0.5 * 0.5 + (1 - ab) ** 0.5 * x_t[3:]
    torch.testing.assert_close(model.eps(x_t[3:], t[3:], torch.zeros(1, 4)), expected)


def test_the_prediction_is_a_config_key():
    config = load_run_config("configs/tiny.yaml", ["model.prediction=v"])
    assert config.model["prediction"] == "v"
    with pytest.raises(ValueError, match="prediction"):
        ModelConfig(graph=AB_GRAPH, image_size=8, channels=1, prediction="x0")

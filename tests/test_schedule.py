"""NoiseSchedule: beta schedules, alpha_bar lookup and the forward marginal q(x_t | x_0)."""

import math

import pytest
import torch

from causaldiffae.diffusion import NoiseSchedule


def test_linear_betas_endpoints_and_dtype() -> None:
    schedule = NoiseSchedule(num_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    assert schedule.num_timesteps == 1000
    assert schedule.betas.shape == (1000,) and schedule.alphas_cumprod.shape == (1000,)
    assert schedule.betas.dtype == torch.float64 and schedule.alphas_cumprod.dtype == torch.float64
    assert schedule.betas.device.type == "cpu"
    assert schedule.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert schedule.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert schedule.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)
    # cumulative product of (1 - beta), equivalently exp(sum log(1 - beta))
    expected_last = math.exp(torch.log1p(-schedule.betas).sum().item())
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(expected_last, rel=1e-9)


@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_alphas_cumprod_strictly_decreasing_in_unit_interval(beta_schedule: str) -> None:
    ab = NoiseSchedule(beta_schedule=beta_schedule).alphas_cumprod
    assert torch.all(ab[1:] < ab[:-1])
    assert torch.all((ab > 0) & (ab < 1))


def test_cosine_schedule_follows_closed_form_and_clips() -> None:
    s, T = 0.008, 1000
    schedule = NoiseSchedule(num_timesteps=T, beta_schedule="cosine")

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    # Before the clipping region, alpha_bar_t = f(t + 1) / f(0) exactly (index t is after t + 1 steps).
    for t in (0, 250, 500, 900):
        assert schedule.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert schedule.betas.max().item() == pytest.approx(0.999)
    assert torch.all(schedule.betas <= 0.999)


def test_cosine_matches_diffusers_squaredcos() -> None:
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ours = NoiseSchedule(num_timesteps=1000, beta_schedule="cosine")
    torch.testing.assert_close(ours.betas.float(), reference.betas, rtol=1e-5, atol=1e-7)


def test_alpha_bar_shape_dtype_device_and_clean_index() -> None:
    schedule = NoiseSchedule()
    like = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    t = torch.tensor([-1, 0, 999])
    ab = schedule.alpha_bar(t, like)
    assert ab.shape == (3, 1, 1, 1)
    assert ab.dtype == torch.float32 and ab.device == like.device
    assert ab[0].item() == 1.0  # t = -1 is the clean image
    assert ab[1].item() == pytest.approx(schedule.alphas_cumprod[0].item(), rel=1e-6)
    assert ab[2].item() == pytest.approx(schedule.alphas_cumprod[999].item(), rel=1e-6)
    # broadcasting adapts to the rank of `like`
    assert schedule.alpha_bar(t, torch.zeros(3, 5, dtype=torch.float64)).shape == (3, 1)


def test_alpha_bar_rejects_bad_timesteps() -> None:
    schedule = NoiseSchedule(num_timesteps=10)
    like = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="10"):
        schedule.alpha_bar(torch.tensor([10]), like)
    with pytest.raises(ValueError, match="-2"):
        schedule.alpha_bar(torch.tensor([-2]), like)
    with pytest.raises(ValueError, match="integer"):
        schedule.alpha_bar(torch.tensor([1.0]), like)


def test_add_noise_matches_formula() -> None:
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 8, 8, generator=gen)
    noise = torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([-1, 0, 500, 999])
    x_t = schedule.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):
        ab = 1.0 if ti == -1 else schedule.alphas_cumprod[ti].item()
        expected = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i]
        torch.testing.assert_close(x_t[i], expected)
    torch.testing.assert_close(x_t[0], x0[0])  # t = -1 adds nothing


def test_add_noise_rejects_mismatched_shapes() -> None:
    schedule = NoiseSchedule()
    with pytest.raises(ValueError, match="same shape"):
        schedule.add_noise(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta_schedule": "quadratic"}, "quadratic"),
        ({"num_timesteps": 0}, "num_timesteps"),
        ({"beta_start": 0.03, "beta_end": 0.02}, "beta_start"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(**kwargs)

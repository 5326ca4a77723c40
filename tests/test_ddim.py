"""Deterministic DDIM: timestep lists, single updates against diffusers, and sample/invert on Gaussian data.

For data x0 ~ N(mu, s^2 I) the optimal noise predictor is known in closed form,
    E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab),
and so is the exact DDIM ODE (probability-flow) map from the clean image to noise level ab:
    x = sqrt(ab) mu + sqrt(ab s^2 + 1 - ab) (x0 - mu) / s.
That turns end-to-end tests of `invert` / `sample` into comparisons with exact answers; the remaining error is
DDIM's first-order discretization error and must shrink roughly like 1/K.
"""

import math

import pytest
import torch
from torch import Tensor

from causaldiffae.diffusion import NoiseSchedule, ddim

MU, S = 0.3, 0.5


def gaussian_denoiser(schedule: NoiseSchedule) -> ddim.Denoiser:
    """Exact eps-prediction E[eps | x_t] for data N(MU, S^2 I)."""

    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],) and t.device == x_t.device
        assert int(t.min()) >= 0  # the clean level -1 is never shown to the network
        ab = schedule.alpha_bar(t, x_t)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * MU) / (ab * S**2 + 1 - ab)

    return denoiser


def exact_ode_encoding(x0: Tensor, ab: float) -> Tensor:
    """Closed-form DDIM ODE solution for Gaussian data, from the clean image to noise level ab."""
    return math.sqrt(ab) * MU + math.sqrt(ab * S**2 + 1 - ab) * (x0 - MU) / S


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(num_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


@pytest.fixture(scope="module")
def x0() -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return MU + S * torch.randn(2000, 4, generator=gen, dtype=torch.float64)


# --- timesteps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 7, 10, 50, 1000])
def test_timesteps_count_ascending_from_zero(steps: int) -> None:
    ts = ddim.timesteps(1000, steps)
    assert len(ts) == steps
    assert ts[0] == 0 and ts[-1] < 1000
    assert all(a < b for a, b in zip(ts, ts[1:], strict=False))


@pytest.mark.parametrize("steps", [10, 50])
def test_timesteps_match_diffusers_leading(steps: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDIMScheduler(num_train_timesteps=1000)
    reference.set_timesteps(steps)
    assert ddim.timesteps(1000, steps) == reference.timesteps.flip(0).tolist()


def test_timesteps_depth_restricts_trajectory() -> None:
    ts = ddim.timesteps(1000, 50, depth=0.5)
    assert len(ts) == 50 and max(ts) < 500
    assert ts == list(range(0, 500, 10))
    assert max(ddim.timesteps(1000, 3, depth=0.3)) < 300


def test_trailing_timesteps_end_at_the_last_training_timestep() -> None:
    assert ddim.timesteps(1000, 50, spacing="trailing") == list(range(19, 1000, 20))
    assert ddim.timesteps(1000, 1, spacing="trailing") == [999]
    assert ddim.timesteps(1000, 3, spacing="trailing") == [332, 666, 999]  # round(333.3) - 1, round(666.7) - 1
    assert ddim.timesteps(1000, 4, depth=0.5, spacing="trailing") == [124, 249, 374, 499]
    with pytest.raises(ValueError, match="spacing"):
        ddim.timesteps(1000, 4, spacing="linspace")  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [10, 50, 30])
def test_timesteps_match_diffusers_trailing(steps: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    reference.set_timesteps(steps)
    assert ddim.timesteps(1000, steps, spacing="trailing") == reference.timesteps.flip(0).tolist()


@pytest.mark.parametrize(
    "args, match",
    [
        ((1000, 0), "steps"),
        ((1000, 1001), "steps"),
        ((1000, 600, 0.5), "steps"),
        ((1000, 10, 0.0), "depth"),
        ((1000, 10, 1.5), "depth"),
        ((0, 1), "num_train_timesteps"),
    ],
)
def test_timesteps_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ddim.timesteps(*args)


# --- single updates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [980, 500, 20, 0])
def test_step_matches_diffusers(schedule: NoiseSchedule, t: int, clip: bool) -> None:
    diffusers = pytest.importorskip("diffusers")
    steps = 50
    reference = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=clip
    )
    reference.set_timesteps(steps)
    ts = ddim.timesteps(1000, steps)
    i = ts.index(t)
    t_prev = ts[i - 1] if i > 0 else -1  # t = 0 is diffusers' last step, to alpha_bar = 1

    gen = torch.Generator().manual_seed(t)
    x0 = torch.randn(2, 3, 8, 8, generator=gen)
    eps_true = torch.randn(2, 3, 8, 8, generator=gen)
    x_t = schedule.add_noise(x0, eps_true, torch.full((2,), t))
    eps = eps_true + 0.1 * torch.randn(2, 3, 8, 8, generator=gen)  # an imperfect prediction

    # with clipping we re-derive eps from the clipped x0 (GLIDE's choice): diffusers' use_clipped_model_output
    expected = reference.step(eps, t, x_t, use_clipped_model_output=clip).prev_sample
    ours = ddim.step(schedule, eps, t, t_prev, x_t, clip=clip)
    # diffusers keeps alphas_cumprod in float32, we in float64: agreement to float32 round-off
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("t", [980, 500, 20, 0])
def test_stochastic_step_matches_diffusers(schedule: NoiseSchedule, t: int, eta: float) -> None:
    """eta > 0: diffusers' DDIMScheduler.step with the same fresh noise (variance_noise); the step onto the clean
    image (t = 0 here) adds none."""
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                        beta_end=0.02, clip_sample=False)
    reference.set_timesteps(50)
    ts = ddim.timesteps(1000, 50)
    i = ts.index(t)
    t_prev = ts[i - 1] if i > 0 else -1
    gen = torch.Generator().manual_seed(t + 1)
    x_t, eps, fresh = (torch.randn(2, 3, 8, 8, generator=gen) for _ in range(3))
    expected = reference.step(eps, t, x_t, eta=eta, variance_noise=fresh).prev_sample
    torch.testing.assert_close(ddim.step(schedule, eps, t, t_prev, x_t, eta=eta, fresh=fresh), expected,
                               rtol=1e-5, atol=1e-5)
    assert (ddim.noise_std(schedule, t, t_prev, eta) == 0) == (t_prev == -1)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_sampling_with_the_exact_denoiser_recovers_the_data(schedule: NoiseSchedule, eta: float) -> None:
    """Data N(MU, S^2), the exact eps-prediction: stochastic DDIM from pure noise draws that distribution (at 500
    steps; at 100 its std falls 7 % short at eta = 1, 3 % at eta = 0: the discretisation)."""
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(4000, 1, generator=gen)
    fresh = torch.randn(500, 4000, 1, generator=gen)
    x0 = ddim.sample(gaussian_denoiser(schedule), x_T, schedule, steps=500, spacing="trailing", eta=eta, fresh=fresh)
    assert x0.mean().item() == pytest.approx(MU, abs=0.025) and x0.std().item() == pytest.approx(S, rel=0.03)


def test_sample_with_eta_zero_is_deterministic_ddim_and_checks_its_noise(schedule: NoiseSchedule) -> None:
    x_T = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    denoiser = gaussian_denoiser(schedule)
    plain = ddim.sample(denoiser, x_T, schedule, steps=5)
    assert torch.equal(ddim.sample(denoiser, x_T, schedule, steps=5, eta=0.0, fresh=torch.ones(5, 2, 4)), plain)
    assert not torch.allclose(ddim.sample(denoiser, x_T, schedule, steps=5, eta=0.5, fresh=torch.ones(5, 2, 4)), plain)
    with pytest.raises(ValueError, match="needs fresh noise"):
        ddim.sample(denoiser, x_T, schedule, steps=5, eta=0.5)
    with pytest.raises(ValueError, match=r"fresh must have shape \(5, 2, 4\)"):
        ddim.sample(denoiser, x_T, schedule, steps=5, eta=0.5, fresh=torch.ones(4, 2, 4))
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        ddim.sample(denoiser, x_T, schedule, steps=5, eta=1.5, fresh=torch.ones(5, 2, 4))


def test_step_to_clean_returns_predicted_x0(schedule: NoiseSchedule) -> None:
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    x_t = schedule.add_noise(x0, eps, torch.tensor([300, 300]))
    torch.testing.assert_close(ddim.step(schedule, eps, 300, -1, x_t), x0)


def test_invert_step_is_exact_inverse_of_step_for_fixed_eps(schedule: NoiseSchedule) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    for t, t_next in [(-1, 0), (0, 20), (480, 500), (500, 999)]:
        up = ddim.invert_step(schedule, eps, t, t_next, x)
        torch.testing.assert_close(ddim.step(schedule, eps, t_next, t, up), x)


def test_step_direction_and_range_checks(schedule: NoiseSchedule) -> None:
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="t_prev"):
        ddim.step(schedule, x, 10, 20, x)
    with pytest.raises(ValueError, match="t_next"):
        ddim.invert_step(schedule, x, 20, 10, x)
    with pytest.raises(ValueError, match="1000"):
        ddim.step(schedule, x, 1000, 10, x)
    with pytest.raises(ValueError, match="same shape"):
        ddim.step(schedule, torch.zeros(1, 4), 20, 10, x)


# --- whole trajectories on Gaussian data -------------------------------------------------------------------


def test_invert_then_sample_reconstructs_and_converges(schedule: NoiseSchedule, x0: Tensor) -> None:
    denoiser = gaussian_denoiser(schedule)
    recon_errors, encode_errors = {}, {}
    for steps in (10, 20, 50, 100):
        x_T = ddim.invert(denoiser, x0, schedule, steps=steps)
        ab_T = schedule.alphas_cumprod[ddim.timesteps(1000, steps)[-1]].item()
        encode_errors[steps] = rel_err(x_T, exact_ode_encoding(x0, ab_T))
        recon_errors[steps] = rel_err(ddim.sample(denoiser, x_T, schedule, steps=steps), x0)
    # Measured (linear schedule, float64): 0.381, 0.214, 0.0925, 0.0475 -- first order in 1/K.
    errors = list(recon_errors.values())
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), recon_errors
    assert recon_errors[100] < 0.07, recon_errors
    assert 1.6 < recon_errors[50] / recon_errors[100] < 2.4, recon_errors  # halves when K doubles
    # The encoding itself converges to the exact ODE solution (measured 0.0277 at K = 100).
    enc = list(encode_errors.values())
    assert all(a > b for a, b in zip(enc, enc[1:], strict=False)), encode_errors
    assert encode_errors[100] < 0.04, encode_errors

    # A full inversion reaches (approximately) standard normal noise.
    x_T = ddim.invert(denoiser, x0, schedule, steps=100)
    assert abs(x_T.mean().item()) < 0.05
    assert abs(x_T.std().item() - 1.0) < 0.05


def test_sample_from_noise_matches_data_distribution(schedule: NoiseSchedule) -> None:
    denoiser = gaussian_denoiser(schedule)
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(4000, 4, generator=gen, dtype=torch.float64)
    std_errors = {}
    for steps in (10, 100):
        samples = ddim.sample(denoiser, x_T, schedule, steps=steps)
        std_errors[steps] = abs(samples.std().item() - S)
        assert abs(samples.mean().item() - MU) < 0.03
    assert std_errors[100] < std_errors[10]
    assert std_errors[100] < 0.03, std_errors  # measured std 0.376 at K = 10, 0.488 at K = 100 (S = 0.5)


def test_partial_depth_inversion_keeps_the_image(schedule: NoiseSchedule, x0: Tensor) -> None:
    denoiser = gaussian_denoiser(schedule)
    steps, depth = 100, 0.5
    tau_K = ddim.timesteps(1000, steps, depth)[-1]
    assert tau_K == 495
    x_mid = ddim.invert(denoiser, x0, schedule, steps=steps, depth=depth)
    recon = ddim.sample(denoiser, x_mid, schedule, steps=steps, depth=depth)
    assert rel_err(recon, x0) < 0.04  # measured 0.0238

    # x_mid sits at tau_K, not at the top of the schedule: it matches the exact ODE state there
    # (measured 0.0136), and not the state a full inversion would reach (measured 0.095 away).
    err_mid = rel_err(x_mid, exact_ode_encoding(x0, schedule.alphas_cumprod[tau_K].item()))
    err_top = rel_err(x_mid, exact_ode_encoding(x0, schedule.alphas_cumprod[999].item()))
    assert err_mid < 0.025 and err_top > 3 * err_mid, (err_mid, err_top)
    # Not pure noise: it keeps sqrt(ab) * MU ~ 0.09 of the data mean (a full inversion keeps ~0.002) and is
    # correlated with the image. (For Gaussian data the ODE map is affine, so the correlation is ~1 at any
    # depth; the two checks above are the discriminating ones.)
    assert x_mid.mean().item() > 0.04
    corr = torch.corrcoef(torch.stack([x_mid.flatten(), x0.flatten()]))[0, 1].item()
    assert corr > 0.95


def test_denoiser_timesteps_for_sample_and_invert(schedule: NoiseSchedule) -> None:
    seen: list[int] = []

    def recording_denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        seen.append(int(t[0]))
        return torch.zeros_like(x_t)

    x = torch.zeros(2, 3)
    ddim.invert(recording_denoiser, x, schedule, steps=5)
    assert seen == [0, 0, 200, 400, 600]  # current point's timestep; the clean start is seen at tau_1 = 0
    seen.clear()
    ddim.sample(recording_denoiser, x, schedule, steps=5)
    assert seen == [800, 600, 400, 200, 0]
    seen.clear()
    ddim.sample(recording_denoiser, x, schedule, steps=5, spacing="trailing")
    assert seen == [999, 799, 599, 399, 199]


def test_gradients_are_not_disabled_and_inference_mode_works(schedule: NoiseSchedule) -> None:
    weight = torch.tensor(0.1, requires_grad=True)

    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        return weight * x_t

    x_T = torch.randn(2, 3)
    out = ddim.sample(denoiser, x_T, schedule, steps=4, progress=True)
    out.sum().backward()
    assert weight.grad is not None

    with torch.inference_mode():
        z = ddim.invert(denoiser, x_T, schedule, steps=4, progress=True)
    assert z.shape == x_T.shape and not z.requires_grad


# --- exact inversion: the residuals of the decoding steps ----------------------------------------------------


def test_invert_exact_one_step_known_answer() -> None:
    """One step from the clean image to t = 0 (alpha_bar 0.9: r = sqrt(0.9), s = sqrt(0.1)) with eps = a x, a = 0.5.
    By hand: x_1 = r x0 + s a x0 = 1.10680 x0; the decoding predicts eps = a x_1 at the top and lands on
    x_1 (1 - a s) / r = 0.98220 x0, so the residual is x0 - 0.98220 x0 = 0.017800 x0."""
    schedule = NoiseSchedule(num_timesteps=10, beta_schedule="linear", beta_start=0.1, beta_end=0.2)
    x0 = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    calls = []

    def linear(x: Tensor, t: Tensor) -> Tensor:
        calls.append(int(t[0]))
        return 0.5 * x

    x_T, residuals = ddim.invert_exact(linear, x0, schedule, steps=1)
    assert calls == [0, 0]  # the inversion's call and the one more at the top
    torch.testing.assert_close(x_T, 1.1067972 * x0)
    assert residuals.shape == (1, 1, 3)
    torch.testing.assert_close(residuals[0], 0.0177995 * x0)
    torch.testing.assert_close(ddim.sample(linear, x_T, schedule, steps=1, residuals=residuals), x0)
    assert torch.equal(ddim.invert(linear, x0, schedule, steps=1), x_T)


@pytest.mark.parametrize("steps", [2, 5, 10])
def test_invert_exact_reconstructs_at_any_steps(schedule: NoiseSchedule, x0: Tensor, steps: int) -> None:
    """With its residuals the decoding retraces the inversion to rounding, where plain DDIM misses by 0.38-0.84
    (relative); the residuals are the plain decoding's per-step misses, so they shrink as the steps grow; the
    decoder's calls at x_{tau_1}..x_{tau_{K-1}} reuse the inversion's: steps + 1 calls."""
    denoiser = gaussian_denoiser(schedule)
    calls = []
    x_T, residuals = ddim.invert_exact(lambda x, t: calls.append(1) or denoiser(x, t), x0, schedule, steps=steps)
    assert len(calls) == steps + 1
    assert torch.equal(x_T, ddim.invert(denoiser, x0, schedule, steps=steps))
    assert rel_err(ddim.sample(denoiser, x_T, schedule, steps=steps, residuals=residuals), x0) < 1e-12
    assert rel_err(ddim.sample(denoiser, x_T, schedule, steps=steps), x0) > 0.05
    if steps > 2:  # the residual of each step: smaller with more, shorter steps
        _, fewer = ddim.invert_exact(denoiser, x0, schedule, steps=steps - 1)
        assert residuals.abs().max() < fewer.abs().max()


def test_sample_refuses_residuals_of_another_shape(schedule: NoiseSchedule, x0: Tensor) -> None:
    denoiser = gaussian_denoiser(schedule)
    x_T, residuals = ddim.invert_exact(denoiser, x0[:4], schedule, steps=3)
    with pytest.raises(ValueError, match=r"residuals must have shape \(4, 4, 4\)"):
        ddim.sample(denoiser, x_T, schedule, steps=4, residuals=residuals)

"""Counterfactual uncertainty: ``counterfactual(..., samples=K)``, its spread, ``--samples`` and the heat map."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from causaldiffae import CausalDiffAE
from causaldiffae.cli import main
from causaldiffae.counterfactual import Spread, counterfactual, sweep
from causaldiffae.images import save_heat_grid
from causaldiffae.model import Latents
from conftest import ab_model, exit_code, predicting_no_noise, responding


def _responsive(**overrides: object) -> CausalDiffAE:
    """ab_model with a perturbed UNet: its output depends on the image, the timestep and z."""
    return responding(ab_model(**overrides))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_one_draw_without_noise_is_the_plain_counterfactual(images):
    model = _responsive()
    plain = counterfactual(model, images, {"a": 0.3}, steps=3, reconstruct=True)
    one = counterfactual(model, images, {"a": 0.3}, steps=3, reconstruct=True, samples=1, posterior=False)
    torch.testing.assert_close(one.images, plain.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(one.reconstruction, plain.reconstruction, rtol=0, atol=1e-6)
    assert one.spread is not None and one.spread.samples.shape == (1, *images.shape)
    assert one.spread.per_pixel.shape == (3, 8, 8) and one.spread.per_pixel.abs().max() == 0  # one draw: std 0
    assert plain.spread is None


def test_the_spread_is_zero_when_the_stochastic_parts_are_off(images):
    """u at the posterior mean in every draw and deterministic DDIM: the K draws are one counterfactual."""
    model = _responsive()
    drawn = counterfactual(model, images, {"a": 0.3}, steps=3, samples=4, posterior=False, generator=_seeded())
    assert drawn.spread is not None
    assert drawn.spread.std.abs().max() < 1e-6 and drawn.spread.per_image.abs().max() < 1e-6
    assert all(v.abs().max() < 1e-6 for v in drawn.spread.labels_std.values())
    plain = counterfactual(model, images, {"a": 0.3}, steps=3)
    torch.testing.assert_close(drawn.images, plain.images, rtol=0, atol=1e-6)


def test_the_result_is_the_mean_of_its_draws_and_they_differ(images):
    model = _responsive()
    drawn = counterfactual(model, images, {"a": 0.3}, steps=3, samples=3, eta=0.3, generator=_seeded())
    spread = drawn.spread
    assert spread is not None and spread.samples.shape == (3, *images.shape)
    torch.testing.assert_close(drawn.images, spread.samples.mean(0))
    torch.testing.assert_close(spread.per_pixel, spread.samples.std(0, correction=0).mean(1))
    torch.testing.assert_close(drawn.labels_cf["b"], spread.labels_cf["b"].mean(0))
    assert (spread.per_image > 1e-4).all()  # posterior draws and stochastic DDIM: the draws disagree
    assert spread.labels_std["a"].abs().max() < 1e-6  # the intervened variable reads its value in every draw
    assert (spread.labels_std["b"] > 0).all()  # its child follows each draw's abducted noise


def test_spread_by_hand():
    """Two draws of one pixel, 0 and 1: std 0.5 (population); readings 2 and 4: std 1."""
    spread = Spread(torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1), {"a": torch.tensor([[2.0], [4.0]])})
    assert spread.per_pixel.tolist() == [[[0.5]]] and spread.per_image.tolist() == [0.5]
    assert spread.labels_std["a"].tolist() == [1.0]
    rgb = Spread(torch.tensor([0.0, 0.2, 0.4]).reshape(1, 1, 3, 1, 1).expand(2, 1, 3, 1, 1).clone(), {})
    rgb.samples[1, 0, 0] = 0.6  # the red channel moves by 0.6 between the draws: std 0.3, over 3 channels 0.1
    assert rgb.per_pixel.item() == pytest.approx(0.1)


def test_the_generator_reproduces_the_draws(images):
    model = _responsive()
    runs = [counterfactual(model, images, {"b": 0.6}, steps=2, samples=3, eta=0.5, generator=_seeded(seed))
            for seed in (1, 1, 2)]
    assert runs[0].spread is not None and runs[1].spread is not None and runs[2].spread is not None
    assert torch.equal(runs[0].spread.samples, runs[1].spread.samples)
    assert not torch.allclose(runs[0].spread.samples, runs[2].spread.samples)


def test_the_reading_of_a_root_spreads_as_its_posterior():
    """mu = 0, sigma = 0.5 in every latent dimension (d = 2): a root's reading is the block mean, de-normalised
    by the min-max scale of [0, 1] (x 0.5): std 0.5 * 0.5 / sqrt(2) = 0.1768; the intervened child's is 0."""
    model = predicting_no_noise(ab_model())
    x = torch.full((1, 1, 8, 8), 0.5)
    mu = torch.zeros(1, 2, 2)
    latents = Latents(mu, torch.full_like(mu, math.log(0.25)), mu, model.causal_layer(mu))
    drawn = counterfactual(model, x, {"b": 0.7}, steps=1, samples=4000, latents=latents, generator=_seeded())
    assert drawn.spread is not None
    assert drawn.spread.labels_std["a"].item() == pytest.approx(0.5 * 0.5 / math.sqrt(2), abs=0.006)
    assert drawn.spread.labels_std["b"].item() < 1e-6
    assert drawn.labels_cf["a"].item() == pytest.approx(0.5, abs=0.01)  # the mean reads the posterior mean


def test_stochastic_ddim_spread_by_hand():
    """A UNet predicting eps = 0, u at the mean: only stochastic DDIM's noise moves the draws. Three steps over
    T = 100 visit 66 -> 33 -> 0 -> clean; a step t -> s adds sigma * xi with sigma = eta sqrt((1 - ab_s) / (1 - ab_t)
    (1 - ab_t / ab_s)) (Song et al. 2021, eq. 16), and every later step (eps = 0) scales it by 1 / sqrt(ab_s) on the
    way to the clean image. So each pixel's std is sqrt(sum sigma^2 / ab_s), halved on the [0, 1] scale."""
    model = predicting_no_noise(ab_model())
    eta, ab = 0.2, model.schedule.alphas_cumprod.double()
    variance = sum(eta**2 * (1 - ab[s]) / (1 - ab[t]) * (1 - ab[t] / ab[s]) / ab[s] for t, s in ((66, 33), (33, 0)))
    expected = 0.5 * math.sqrt(float(variance))
    x = torch.full((2, 1, 8, 8), 0.5)
    drawn = counterfactual(model, x, {"a": 0.2}, steps=3, depth=1.0, samples=600, eta=eta, posterior=False,
                           generator=_seeded())
    assert drawn.spread is not None and 0.01 < expected < 0.1  # large enough to see, far from the clamp at 0 and 1
    assert drawn.spread.per_image.tolist() == pytest.approx([expected] * 2, rel=0.03)
    torch.testing.assert_close(drawn.images, x, rtol=0, atol=0.02)  # the noise averages out


@pytest.mark.parametrize("kwargs, message", [
    (dict(samples=0), "samples must be a positive integer"),
    (dict(samples=2.5), "samples must be a positive integer"),
    (dict(samples=True), "samples must be a positive integer"),
    (dict(samples="3"), "samples must be a positive integer"),
    (dict(eta=-0.1), r"eta must be a number in \[0, 1\]"),
    (dict(eta=1.5), r"eta must be a number in \[0, 1\]"),
    (dict(eta=float("nan")), r"eta must be a number in \[0, 1\]"),
    (dict(eta=0.5, abduction="ddim", solver="dpm++2m"), "solver 'ddim' only"),
    (dict(samples=2, do={"a": [0.1, 0.2]}), "do\\(a=...\\) has 2 values for 3 images"),
])
def test_bad_draws_are_named(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        counterfactual(ab_model(), images, **{"do": {"a": 0.3}, **kwargs}, steps=2)


def test_a_model_without_a_posterior_warns_that_its_draws_agree(images):
    with pytest.warns(UserWarning, match="3 samples are identical"):
        drawn = counterfactual(_responsive(deterministic_encoder=True), images, {"a": 0.3}, steps=2, samples=3)
    assert drawn.spread is not None and drawn.spread.per_image.abs().max() < 1e-6


def test_values_per_image_and_sweep_columns_share_the_draws(images):
    model = _responsive()
    drawn = counterfactual(model, images, {"a": [0.1, 0.5, 0.9]}, steps=2, samples=2, generator=_seeded())
    assert drawn.spread is not None
    torch.testing.assert_close(drawn.spread.labels_cf["a"], torch.tensor([[0.1, 0.5, 0.9]] * 2))
    columns = [({"a": 0.2}, 1.0), ({"a": 0.8}, 1.0)]
    swept = sweep(model, images, columns, steps=2, samples=2, generator=_seeded(3))
    alone = counterfactual(model, images, {"a": 0.8}, steps=2, samples=2, generator=_seeded(3))
    assert swept.spread is not None and swept.spread.samples.shape == (2, 2, *images.shape)
    second = swept.column(1).spread
    assert second is not None and alone.spread is not None
    torch.testing.assert_close(second.samples, alone.spread.samples)  # the same draws, whatever the columns


def test_heat_grid_colours_and_its_colour_bar(tmp_path):
    """Values 0, 1, 2, 4 on a scale to 4 are heat(0), heat(0.25), ...: black, (191, 0, 0), (255, 128, 0) (127.5
    rounds to 128), white. The 2 x 2 map is enlarged to one 96 px tile at (2, 2) (pad 2); the colour bar runs from
    black at x = 8 to white, under it."""
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    path = save_heat_grid(tmp_path / "heat.png", [maps], 4.0, "std, grey levels")
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    assert rgb[12, 12].tolist() == [0, 0, 0] and rgb[12, 62].tolist() == [191, 0, 0]
    assert rgb[62, 12].tolist() == [255, 128, 0] and rgb[62, 62].tolist() == [255, 255, 255]
    bar = rgb[100 + 4 + 6]  # the maps are 100 px high; the bar starts 4 px under them
    assert bar[8].tolist() == [0, 0, 0] and bar[8 + 83].tolist() == [255, 255, 255]  # 84 px wide (100 - 16)
    assert bar[8 + 41].tolist()[0] == 255 and bar[8 + 41].tolist()[2] == 0  # half way: red to yellow
    with pytest.raises(ValueError, match="positive"):
        save_heat_grid(tmp_path / "zero.png", [maps], 0.0, "")


# -- command line ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uncertain")
    _responsive().save_pretrained(folder / "model")
    files = []
    for i in range(2):
        files.append(folder / f"{i}.png")
        Image.fromarray((np.arange(64).reshape(8, 8) * (3 + i)).astype(np.uint8), "L").save(files[-1])
    return folder / "model", files


def test_cli_samples_write_the_spread_map_and_its_numbers(saved, tmp_path):
    model, files = saved
    out = tmp_path / "cf.png"
    assert main(["counterfactual", str(model), "--image", *map(str, files), "--do", "a=0.4", "--steps", "2",
                 "--samples", "3", "--eta", "0.2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["samples"] == 3 and report["settings"]["eta"] == 0.2
    assert report["spread_map"] == str(tmp_path / "cf-spread.png")
    spread = report["columns"][0]["spread"]
    assert len(spread) == 2 and all(s["pixels_max"] >= s["pixels_mean"] > 0 for s in spread)
    assert all(s["labels_std"]["a"] < 1e-4 and s["labels_std"]["b"] > 0 for s in spread)
    with Image.open(tmp_path / "cf-spread.png") as heat:
        assert heat.size[1] > 96  # a row of enlarged maps and the colour bar under it
    swept = tmp_path / "sweep.png"
    assert main(["counterfactual", str(model), "--image", *map(str, files), "--do", "a=0:1:3", "--steps", "2",
                 "--samples", "2", "--out", str(swept)]) == 0
    columns = json.loads(swept.with_suffix(".json").read_text())["columns"]
    assert len(columns) == 3 and all(len(c["spread"]) == 2 for c in columns)
    assert (tmp_path / "sweep-spread.png").is_file()
    plain = tmp_path / "plain.png"
    assert main(["counterfactual", str(model), "--image", str(files[0]), "--do", "a=0.4", "--steps", "2",
                 "--out", str(plain)]) == 0
    assert "spread_map" not in json.loads(plain.with_suffix(".json").read_text())
    assert not (tmp_path / "plain-spread.png").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--samples", "0", "must be a positive integer"), ("--samples", "2.5", "must be a positive integer"),
    ("--eta", "2", r"must lie in \[0, 1\]"), ("--eta", "x", r"must be a number in \[0, 1\]"),
])
def test_cli_bad_samples_are_named(saved, tmp_path, capsys, flag, value, message):
    model, files = saved
    assert exit_code(["counterfactual", str(model), "--image", str(files[0]), "--do", "a=0.4", flag, value,
                      "--out", str(tmp_path / "x.png")]) == 2
    assert re.search(message, capsys.readouterr().err)

"""The counterfactual pipeline (abduction -> action -> prediction), its CLI commands and the demo."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.cli import main
from causaldiffae.counterfactual import abduct_noise, counterfactual, decode, guided_denoiser, sample, sweep
from causaldiffae.data import morphomnist, pendulum
from causaldiffae.demo import dataset_of, run_demo
from causaldiffae.diffusion import ddim
from conftest import TINY, TINY_CONFIG, TINY_SIZE, exit_code, predicting_no_noise, responding


def _model(seed: int = 0, zero_eps: bool = False) -> CausalDiffAE:
    """A tiny model whose UNet predicts something; with ``zero_eps`` one that predicts eps = 0, which makes DDIM
    inversion and decoding exact inverses: the pipeline's plumbing can then be checked exactly."""
    torch.manual_seed(seed)
    model = CausalDiffAE(ModelConfig(graph=pendulum.GRAPH, image_size=TINY_SIZE, channels=3, **TINY)).eval()
    return predicting_no_noise(model) if zero_eps else responding(model)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    rows = pendulum.samples()[::1000][:3]
    return torch.stack([torch.from_numpy(pendulum.render(r["angle"], r["light"], TINY_SIZE)).permute(2, 0, 1)
                        for r in rows]).float() / 255


def test_null_intervention_is_exact_when_eps_is_zero(images):
    model = _model(zero_eps=True)
    for depth in (1.0, 0.5):
        out = counterfactual(model, images, {}, steps=10, depth=depth).images
        assert torch.allclose(out, images, atol=1e-4), (depth, (out - images).abs().max())


@pytest.mark.parametrize("depth", [1.0, 0.5])
def test_exact_abduction_reconstructs_a_model_that_predicts_noise(images, depth):
    """A UNet that predicts noise: plain DDIM inversion then decoding misses the image at 3 steps; the default
    "exact" abduction (residuals of the factual decoding steps) returns it, and a do() still changes it."""
    model = _model()
    exact = counterfactual(model, images, {}, steps=3, depth=depth)
    plain = counterfactual(model, images, {}, steps=3, depth=depth, abduction="ddim")
    assert exact.noise.residuals is not None and exact.noise.residuals.shape == (3, *images.shape)
    assert (exact.images - images).abs().max() < 1e-4
    assert (plain.images - images).abs().mean() > 1e-3
    torch.testing.assert_close(exact.x_T, plain.x_T)  # the same x_T; the residuals are the difference
    moved = counterfactual(model, images, {"angle": 40.0}, steps=3, depth=depth)
    assert (moved.images - images).abs().mean() > 1e-3


def test_exact_abduction_decodes_with_ddim_at_its_own_steps_only(images):
    """Its residuals belong to DDIM's steps: another solver, or other steps, is refused by name."""
    model = _model()
    z = model.encode(images).z
    noise = abduct_noise(model, images, z, steps=3)
    with pytest.raises(ValueError, match="abducted with 3 steps and cannot be decoded with 4"):
        decode(model, noise, z, steps=4)
    with pytest.raises(ValueError, match="'dpm\\+\\+2m' cannot decode the 'exact' abduction"):
        decode(model, noise, z, steps=3, solver="dpm++2m")
    with pytest.raises(ValueError, match="'dpm\\+\\+2m' cannot decode the 'exact' abduction"):
        counterfactual(model, images, {}, steps=3, solver="dpm++2m")
    torch.testing.assert_close(decode(model, noise.repeat(2), z.repeat(2, 1, 1), steps=3),
                               images.repeat(2, 1, 1, 1), atol=1e-4, rtol=0)


def test_noise_abduction_loses_the_image(images):
    model = _model(zero_eps=True)
    out = counterfactual(model, images, {}, steps=10, abduction="noise",
                         generator=torch.Generator().manual_seed(0)).images
    assert (out - images).abs().mean() > 0.05  # fresh noise at the top keeps almost nothing of x0


@pytest.mark.parametrize("depth,top", [(1.0, 90), (0.7, 63)])
def test_noise_abduction_is_q_sample_at_the_top_of_the_trajectory(images, depth, top):
    """The reference's abduction x_T = q_sample(x0, T-1): here q_sample at the trajectory's top timestep tau_K,
    where decoding starts (T = 100, 10 steps: 90 at depth 1.0, 63 at depth 0.7)."""
    model = _model()
    assert ddim.timesteps(100, 10, depth)[-1] == top
    z = model.encode(images).z
    x_T = abduct_noise(model, images, z, steps=10, depth=depth, abduction="noise",
                       generator=torch.Generator().manual_seed(0))
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    expected = model.schedule.add_noise(images * 2 - 1, noise, torch.full((3,), top))
    assert torch.allclose(x_T.x_T, expected) and x_T.residuals is None


def test_fresh_noise_is_decoded_with_clipping_an_inversion_without(images, monkeypatch):
    """Decoding fresh noise clips the predicted x0 to [-1, 1] as the reference does; an inverted x_T must not be
    clipped (the inversion would no longer be undone exactly)."""
    import importlib

    cf = importlib.import_module("causaldiffae.counterfactual")  # the package exports a function of that name
    seen: list[bool] = []
    real = cf.decode
    monkeypatch.setattr(cf, "decode", lambda *args, clip=False, **kw: seen.append(clip) or real(*args, **kw))
    model = _model()
    counterfactual(model, images, {}, steps=4, abduction="noise", generator=torch.Generator().manual_seed(0))
    counterfactual(model, images, {}, steps=4, abduction="ddim")
    assert seen == [True, False]


def test_guidance_is_batched_and_equals_the_separate_evaluations(images):
    model = _model()
    z = model.encode(images).z
    cond = model.condition(z, len(images))
    x_t, t = torch.randn(3, 3, TINY_SIZE, TINY_SIZE), torch.tensor([5, 50, 90])
    with torch.no_grad():
        eps_c, eps_null = model.eps(x_t, t, cond), model.eps(x_t, t, model.condition(None, 3))
        assert torch.equal(guided_denoiser(model, cond, 1.0)(x_t, t), eps_c)
        expected = eps_null + 2.5 * (eps_c - eps_null)
        assert torch.allclose(guided_denoiser(model, cond, 2.5)(x_t, t), expected, atol=1e-5)
        assert torch.allclose(guided_denoiser(model, cond, 0.0)(x_t, t), eps_null, atol=1e-5)


def test_details_report_the_intervention_and_leave_non_descendants(images):
    model = _model()
    r = counterfactual(model, images, {"angle": 20.0}, steps=4, reconstruct=True)
    assert r.images.shape == images.shape and r.reconstruction.shape == images.shape
    assert r.images.min() >= 0 and r.images.max() <= 1
    names = model.graph.variables
    assert torch.allclose(r.labels_cf["angle"], torch.full((3,), 20.0), atol=1e-4)
    light = names.index("light")
    assert torch.equal(r.z_cf[:, light], r.z[:, light])  # not a descendant of angle: untouched
    assert not torch.allclose(r.z_cf[:, names.index("shadow_length")], r.z[:, names.index("shadow_length")])
    assert r.x_T.shape == images.shape


def test_sweep_matches_single_queries(images):
    model = _model()
    columns = [({"angle": -10.0}, 1.0), ({"angle": 25.0}, 1.0), ({"light": 70.0}, 2.0)]
    s = sweep(model, images, columns, steps=4)
    assert s.images.shape == (3, *images.shape)
    for k, (do, w) in enumerate(columns):
        single = counterfactual(model, images, do, steps=4, guidance=w).images
        assert torch.allclose(s.images[k], single, atol=1e-5)


def test_sweep_keeps_its_column_axis_for_one_column_and_arguments_after_do_are_keywords(images):
    model = _model()
    one = sweep(model, images, [({"angle": 5.0}, 1.0)], steps=3)
    assert one.images.shape == (1, *images.shape) and one.z_cf.shape[0] == 1 and len(one) == 1
    assert one.labels_cf["angle"].shape == (1, 3)
    torch.testing.assert_close(one.column(0).images, counterfactual(model, images, {"angle": 5.0}, steps=3,
                                                                    guidance=1.0).images)
    with pytest.raises(TypeError):
        counterfactual(model, images, {}, 3)  # steps by keyword only
    with pytest.raises(TypeError):
        sample(model, {}, 2, 3)


def test_latents_given_are_used_instead_of_encoding(images, monkeypatch):
    model = _model()
    latents = model.encode(images)
    expected = counterfactual(model, images, {"angle": 5.0}, steps=3).images
    monkeypatch.setattr(model, "encode", lambda *a, **k: pytest.fail("encoded although latents were given"))
    torch.testing.assert_close(counterfactual(model, images, {"angle": 5.0}, steps=3, latents=latents).images,
                               expected)
    with pytest.raises(ValueError, match="z must have shape"):
        counterfactual(model, images, {}, steps=2, latents=latents._replace(z=latents.z[:2]))


def test_per_image_values_and_joint_interventions(images):
    model = _model()
    r = counterfactual(model, images, {"angle": [0.0, 10.0, 20.0], "light": 80.0}, steps=3)
    assert torch.allclose(r.labels_cf["angle"], torch.tensor([0.0, 10.0, 20.0]), atol=1e-4)
    assert torch.allclose(r.labels_cf["light"], torch.full((3,), 80.0), atol=1e-4)
    assert set(r.labels) == set(model.graph.variables) and r.labels["angle"].shape == (3,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(do={"nope": 1.0}), "valid variables"),
    (dict(do={"angle": float("nan")}), "finite"),
    (dict(do={}, abduction="magic"), "abduction"),
])
def test_bad_queries_are_named(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        counterfactual(_model(), images, steps=2, **kwargs)


def test_images_outside_the_unit_range_or_of_the_wrong_shape_are_refused(images):
    model = _model()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        counterfactual(model, images * 2 - 1, {}, steps=2)
    with pytest.raises(ValueError, match="16, 16"):
        counterfactual(model, torch.rand(2, 3, 20, 20), {}, steps=2)


def test_sample_is_reproducible_and_in_range():
    model = _model()
    a = sample(model, {"angle": 10.0}, 4, steps=3, generator=torch.Generator().manual_seed(1))
    b = sample(model, {"angle": 10.0}, 4, steps=3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, TINY_SIZE, TINY_SIZE) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_sample_decodes_fresh_noise_from_the_top_of_the_full_trajectory(monkeypatch):
    """x_T ~ N(0, I) is the state at t = T - 1 (trailing spacing), not at the counterfactual inversion depth:
    T = 100, 10 steps -> the denoiser sees 99, 89, ..., 9 (leading spacing would start at 90, depth 0.7 at 63)."""
    model = _model()
    seen: list[int] = []
    eps = model.eps

    def recording_eps(x_t, t, cond):
        seen.append(int(t[0]))
        return eps(x_t, t, cond)

    monkeypatch.setattr(model, "eps", recording_eps)
    sample(model, {"angle": 10.0}, 2, steps=10, generator=torch.Generator().manual_seed(0))
    assert seen == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]


# -- command line --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dataset) -> Path:
    out = tmp_path_factory.mktemp("cf") / "run"
    assert main(["train", str(TINY_CONFIG), "--out", str(out), "--set", "data.name=folder",
                 "--set", f"data.root={tiny_dataset}", "--set", "train.max_steps=2"]) == 0
    return out


def test_cli_counterfactual_writes_grid_and_json(run, tmp_path):
    out = tmp_path / "cf.png"
    assert main(["counterfactual", str(run), "--do", "angle=20", "--index", "0:3", "--steps", "3",
                 "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert len(report["images"]) == 3 and len(report["factual_labels"]) == 3
    column = report["columns"][0]
    assert column["do"] == {"angle": 20.0}
    assert all(abs(e["angle"] - 20.0) < 1e-3 for e in column["model_counterfactual_estimate"])
    assert set(column["model_counterfactual_estimate"][0]) == set(pendulum.VARIABLES)
    with Image.open(out) as grid:
        assert grid.size[0] > grid.size[1]  # 3 rows (factual, recon, counterfactual), 3 columns + labels


def test_cli_sweeps_add_one_column_per_value(run, tmp_path):
    one, sweep_png, weights = tmp_path / "one.png", tmp_path / "sweep.png", tmp_path / "w.png"
    base = ["counterfactual", str(run), "--index", "0:2", "--steps", "2"]
    assert main([*base, "--do", "angle=0", "--out", str(one)]) == 0
    assert main([*base, "--do", "angle=-30:30:5", "--out", str(sweep_png)]) == 0
    assert main([*base, "--do", "light=80", "--guidance", "0,1,2", "--out", str(weights)]) == 0
    report = json.loads(sweep_png.with_suffix(".json").read_text())
    assert [c["do"]["angle"] for c in report["columns"]] == [-30.0, -15.0, 0.0, 15.0, 30.0]
    assert [c["guidance"] for c in json.loads(weights.with_suffix(".json").read_text())["columns"]] == [0, 1, 2]
    with Image.open(sweep_png) as a, Image.open(weights) as b:
        assert a.size[0] > b.size[0]  # 2 + 5 columns against 2 + 3


def test_cli_errors_name_the_problem(run, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert exit_code(["counterfactual", str(run), "--do", "nope=1", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "angle" in err and "Traceback" not in err
    assert exit_code(["counterfactual", str(run), "--do", "angle=abc", "--out", out]) == 2
    assert "not a number" in capsys.readouterr().err
    big = tmp_path / "big.png"
    Image.new("RGB", (32, 32)).save(big)
    assert exit_code(["counterfactual", str(run), "--image", str(big), "--out", out]) == 2
    assert "16x16" in capsys.readouterr().err
    grey = tmp_path / "grey.png"
    Image.new("L", (16, 16)).save(grey)
    assert exit_code(["counterfactual", str(run), "--image", str(grey), "--out", out]) == 2
    assert "3 channel" in capsys.readouterr().err


def test_cli_out_of_range_value_warns_but_runs(run, tmp_path, capsys):
    out = tmp_path / "far.png"
    assert main(["counterfactual", str(run), "--do", "angle=80", "--index", "0", "--steps", "2",
                 "--out", str(out)]) == 0
    assert "extrapolation" in capsys.readouterr().err
    assert out.exists()


def test_cli_counterfactual_on_own_images_and_sample(run, tmp_path):
    files = []
    for i, r in enumerate(pendulum.samples()[:2]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(pendulum.render(r["angle"], r["light"], TINY_SIZE)).save(files[-1])
    out = tmp_path / "own.png"
    assert main(["counterfactual", str(run), "--image", *map(str, files), "--do", "light=120", "--steps", "2",
                 "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["factual_labels"] is None
    samples = tmp_path / "samples.png"
    assert main(["sample", str(run), "--do", "angle=10", "--n", "3", "--steps", "2", "--out", str(samples)]) == 0
    assert samples.exists()


def test_demo_writes_report_and_grids(run, tmp_path):
    out = run_demo(tmp_path / "demo", model_dir=run, steps=2, n_images=2, n_values=3)
    report = (out / "report.md").read_text()
    for name in pendulum.VARIABLES:
        assert (out / f"traversal-{name}.png").exists()
        assert f"traversal-{name}.png" in report
    assert (out / "reconstruction.png").exists()


def test_demo_of_a_morphomnist_model_keeps_its_digit_condition(tmp_path):
    """A class-conditioned MorphoMNIST model whose UNet predicts eps = 0 decodes every query back to its input:
    the report must then show zero reconstruction error and the model's error equal to the factual image's."""
    torch.manual_seed(0)
    model = CausalDiffAE(ModelConfig(graph=morphomnist.GRAPH, image_size=TINY_SIZE, channels=1, num_classes=10,
                                     **TINY)).eval()
    model.save_pretrained(tmp_path / "mm")
    out = run_demo(tmp_path / "demo", model_dir=tmp_path / "mm", steps=2, n_images=2, n_values=3)
    report = (out / "report.md").read_text()
    assert "Mean absolute error 0.0000" in report.replace("mean absolute error", "Mean absolute error")
    for name in morphomnist.VARIABLES:
        assert f"traversal-{name}.png" in report and (out / f"traversal-{name}.png").exists()
        section = report.split(f"### do({name})")[1]
        model_err, noop_err = re.findall(r"model (\d\.\d{4}), factual image as the answer (\d\.\d{4})", section)[0]
        assert model_err == noop_err and float(noop_err) > 0
    assert dataset_of(_model()) == "pendulum" and dataset_of(model) == "morphomnist"
    renamed = {"variables": [dict(v, name=f"{v['name']}2") for v in morphomnist.GRAPH["variables"]],
               "edges": [["thickness2", "intensity2"]]}
    other = CausalDiffAE(ModelConfig(graph=renamed, image_size=TINY_SIZE, channels=1, **TINY))
    with pytest.raises(ValueError, match=r"a model of a built-in dataset \(variables of pendulum \[.angle., .*"
                                         r"morphomnist \[.thickness., .intensity.\]\), got "
                                         r"\[.thickness2., .intensity2.\]"):
        dataset_of(other)

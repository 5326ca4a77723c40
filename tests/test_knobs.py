"""A model's own counterfactual knobs (knobs.json): read, written, refused when broken, and used where a call
or command names no depth, guidance weight or number of DDIM steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.counterfactual import counterfactual
from causaldiffae.data import load_dataset
from causaldiffae.demo import SHIPPED_MODELS
from causaldiffae.knobs import (
    DEFAULT_DEPTH,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    KNOBS_NAME,
    Knobs,
    read_knobs,
    write_knobs,
)
from causaldiffae.metrics.settings import Settings
from conftest import TINY, TINY_SIZE, ab_model, exit_code, predicting_no_noise


def test_a_folder_without_knobs_gets_the_global_defaults(tmp_path):
    assert read_knobs(tmp_path) == Knobs()
    assert (Knobs().depth, Knobs().guidance, Knobs().steps) == (DEFAULT_DEPTH, DEFAULT_GUIDANCE, DEFAULT_STEPS) \
        == (0.5, 1.0, 50)


def test_written_knobs_read_back_and_fill_only_what_a_call_leaves_open(tmp_path):
    path = write_knobs(tmp_path, Knobs(0.7, 1.0, 20, "by hand"))
    assert path == tmp_path / KNOBS_NAME
    assert json.loads(path.read_text()) == {"depth": 0.7, "guidance": 1.0, "steps": 20, "chosen_by": "by hand"}
    knobs = read_knobs(tmp_path)
    assert knobs == Knobs(0.7, 1.0, 20, "by hand")
    assert knobs.resolve(None, None) == (0.7, 1.0)
    assert knobs.resolve(0.3, None) == (0.3, 1.0) and knobs.resolve(None, 2.0) == (0.7, 2.0)
    assert knobs.resolve_steps(None) == 20 and knobs.resolve_steps(3) == 3
    own = Settings().resolved(knobs)  # what an evaluation records: the values it used
    assert (own.depth, own.guidance, own.steps) == (0.7, 1.0, 20)
    given = Settings(depth=0.3, guidance=0.0, steps=3).resolved(knobs)  # a given value wins, 0 included
    assert (given.depth, given.guidance, given.steps) == (0.3, 0.0, 3)


def test_a_knobs_file_without_steps_loads_with_50(tmp_path):
    """Every knobs.json written before steps were a knob (the shipped ones included) keeps 50 steps."""
    (tmp_path / KNOBS_NAME).write_text('{"depth": 0.7, "guidance": 1.0, "chosen_by": "before steps"}')
    assert read_knobs(tmp_path) == Knobs(0.7, 1.0, 50, "before steps")


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "corrupt knobs file"),
    ("[0.4, 1.5]", "JSON object with 'depth' and 'guidance'"),
    ('{"depth": 0.4}', "JSON object with 'depth' and 'guidance'"),
    ('{"depth": 0.0, "guidance": 1}', r"depth must lie in \(0, 1\]"),
    ('{"depth": 0.5, "guidance": -1}', "guidance must be >= 0"),
    ('{"depth": "0.5", "guidance": 1}', "depth must be a finite number"),
    ('{"depth": 0.5, "guidance": NaN}', "guidance must be a finite number"),
    ('{"depth": 0.5, "guidance": 1, "solver": "ddim"}',
     r"unknown keys \['solver'\] \(expected depth, guidance, steps, chosen_by\)"),
    ('{"depth": 0.5, "guidance": 1, "steps": 0}', "knobs: steps must be a positive integer"),
    ('{"depth": 0.5, "guidance": 1, "steps": -1}', "knobs: steps must be a positive integer"),
    ('{"depth": 0.5, "guidance": 1, "steps": 2.5}', "knobs: steps must be a positive integer"),
    ('{"depth": 0.5, "guidance": 1, "steps": 20.0}', "knobs: steps must be a positive integer"),
    ('{"depth": 0.5, "guidance": 1, "steps": true}', "knobs: steps must be a positive integer"),
    ('{"depth": 0.5, "guidance": 1, "steps": "x"}', "knobs: steps must be a positive integer"),
    ('{"depth": 0.5, "guidance": 1, "steps": null}', "knobs: steps must be a positive integer"),
])
def test_a_broken_knobs_file_is_refused_by_name(tmp_path, text, message):
    (tmp_path / KNOBS_NAME).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_knobs(tmp_path)


def test_from_pretrained_reads_the_knobs_and_counterfactuals_use_them(tmp_path):
    """A model that predicts zero noise: DDIM inversion then scales the image by a factor that depends only on
    the depth, so x_T tells which depth was used."""
    model = ab_model()
    model.save_pretrained(tmp_path)
    assert CausalDiffAE.from_pretrained(tmp_path).knobs == Knobs()
    write_knobs(tmp_path, Knobs(0.9, 1.0))
    loaded = predicting_no_noise(CausalDiffAE.from_pretrained(tmp_path))
    assert loaded.knobs.depth == 0.9
    x = torch.rand(2, 1, 8, 8)
    own = counterfactual(loaded, x, {"a": 0.5}, steps=3).x_T
    explicit = counterfactual(loaded, x, {"a": 0.5}, steps=3, depth=0.9).x_T
    default = counterfactual(loaded, x, {"a": 0.5}, steps=3, depth=DEFAULT_DEPTH).x_T
    torch.testing.assert_close(own, explicit)
    assert (own - default).abs().max() > 1e-3  # deeper inversion: x_T shrinks further towards zero
    assert own.abs().mean() < default.abs().mean()


def test_the_models_own_steps_set_the_network_calls_of_a_counterfactual(tmp_path):
    """knobs.json says 3 steps: a counterfactual that names none runs 3 + 1 inversion calls (the "exact" abduction's
    one more, at the top) and 3 decoding UNet calls (one per step at guidance 1, a batch this small in one call); a
    call that names its steps runs those instead; the plain "ddim" abduction saves the one."""
    ab_model().save_pretrained(tmp_path)
    write_knobs(tmp_path, Knobs(0.5, 1.0, 3))
    model = CausalDiffAE.from_pretrained(tmp_path)
    assert model.knobs.steps == 3
    calls = []
    forward = model.unet.forward
    model.unet.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # type: ignore[method-assign]
    x = torch.rand(2, 1, 8, 8)
    counterfactual(model, x, {"a": 0.5})
    assert len(calls) == 4 + 3
    calls.clear()
    counterfactual(model, x, {"a": 0.5}, steps=5)
    assert len(calls) == 6 + 5
    calls.clear()
    counterfactual(model, x, {"a": 0.5}, reconstruct=True)  # the reconstruction decodes in the same calls
    assert len(calls) == 4 + 3
    calls.clear()
    counterfactual(model, x, {"a": 0.5}, abduction="ddim")
    assert len(calls) == 3 + 3
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        counterfactual(model, x, {"a": 0.5}, steps=2.5)


def test_cli_counterfactual_runs_and_records_the_models_own_steps(tmp_path):
    """No --steps: the command runs at the model's steps knob and OUT.json says so; --steps overrides it."""
    ab_model().save_pretrained(tmp_path / "model")
    write_knobs(tmp_path / "model", Knobs(0.5, 1.0, 2))
    Image.new("L", (8, 8), 128).save(tmp_path / "x.png")
    args = ["counterfactual", str(tmp_path / "model"), "--image", str(tmp_path / "x.png"), "--do", "a=0.5"]
    assert exit_code([*args, "--out", str(tmp_path / "own.png")]) == 0
    assert json.loads((tmp_path / "own.json").read_text())["settings"]["steps"] == 2
    assert exit_code([*args, "--steps", "3", "--out", str(tmp_path / "given.png")]) == 0
    assert json.loads((tmp_path / "given.json").read_text())["settings"]["steps"] == 3


def test_the_shipped_models_carry_the_knobs_chosen_on_validation():
    """The grids on val of the models trained on a third of the compute: docs/results/pendulum/tune-third chose
    0.7 / 1 at 15 steps, docs/results/morphomnist/small16/tune-shipped 0.7 / 1 at 8 (the steps of the exact
    abduction from docs/performance.md)."""
    docs = Path(__file__).parents[1] / "docs/results"
    for name, grid_file, expected in (("pendulum", "pendulum/tune-third", (0.7, 1.0, 15)),
                                      ("morphomnist", "morphomnist/small16/tune-shipped", (0.7, 1.0, 8))):
        grid = json.loads((docs / grid_file / "tune.json").read_text())
        assert (grid["best"]["depth"], grid["best"]["guidance"], grid["settings"]["steps"]) == expected, name
        knobs = read_knobs(SHIPPED_MODELS[name])
        assert (knobs.depth, knobs.guidance, knobs.steps) == expected and "val split" in knobs.chosen_by, name


def test_tune_apply_writes_the_chosen_knobs(tmp_path, tiny_dataset, capsys):
    model = _model_for(tiny_dataset)
    model.save_pretrained(tmp_path / "model")
    args = ["tune", str(tmp_path / "model"), "--data", str(tiny_dataset), "--split", "train", "--depths", "0.5,1",
            "--guidance", "1", "--n", "4", "--steps", "2"]
    assert exit_code([*args, "--out", str(tmp_path / "t1")]) == 0
    assert not (tmp_path / "model" / KNOBS_NAME).exists()  # only --apply touches the model folder
    assert exit_code([*args, "--out", str(tmp_path / "t2"), "--apply"]) == 0
    best = json.loads((tmp_path / "t2" / "tune.json").read_text())["best"]
    knobs = CausalDiffAE.from_pretrained(tmp_path / "model").knobs
    assert (knobs.depth, knobs.guidance) == (best["depth"], best["guidance"]) and "train split" in knobs.chosen_by
    assert knobs.steps == 2 and "2 DDIM steps" in knobs.chosen_by  # the steps the grid was scored at
    assert f"wrote {tmp_path / 'model' / KNOBS_NAME}" in capsys.readouterr().out
    # no --steps: the grid runs at the model's own steps, and --apply writes those
    write_knobs(tmp_path / "model", Knobs(0.5, 1.0, 3))
    assert exit_code([*args[:-2], "--out", str(tmp_path / "t3"), "--apply"]) == 0
    assert json.loads((tmp_path / "t3" / "tune.json").read_text())["settings"]["steps"] == 3
    assert read_knobs(tmp_path / "model").steps == 3


def test_cli_help_names_the_models_own_default(capsys):
    assert exit_code(["counterfactual", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the model's own, from its knobs.json, else 0.5" in text
    assert "DDIM steps (default: the model's own, from its knobs.json, else 50)" in text
    for command in (["evaluate"], ["tune"], ["demo"]):
        assert exit_code([*command, "--help"]) == 0
        assert "the model's own, from its knobs.json, else 50" in " ".join(capsys.readouterr().out.split()), command
    assert exit_code(["sample", "--help"]) == 0  # samples from noise are no counterfactuals: a plain 50
    assert "DDIM steps (default 50)" in " ".join(capsys.readouterr().out.split())


def _model_for(folder) -> CausalDiffAE:
    data = load_dataset(folder, TINY_SIZE)
    torch.manual_seed(0)
    return CausalDiffAE(ModelConfig(graph=data.graph.to_dict(), image_size=TINY_SIZE, channels=3, **TINY)).eval()


@pytest.mark.parametrize(("text", "message"), [
    ('{"depth": 0.5, "guidance": 1, "steps": 1000000}',
     r"knobs.json: steps 1000000 is more than the 50 timesteps that depth 0.5 spans of this model's 100 "
     r"\(round\(depth x T\)\); use at most 50"),
    ('{"depth": 1e-300, "guidance": 1}',
     r"knobs.json: depth 1e-300 spans no timestep of this model's 100 \(round\(depth x 100\) = 0\); use a depth "
     r"of at least 0.01"),
    ('{"depth": 0.5, "guidance": 1, "chosen_by": 7}', "knobs.json: chosen_by must be a text, got 7"),
    ('{"depth": 0.5, "guidance": Infinity}', "knobs.json: knobs: guidance must be a finite number, got inf"),
])
def test_knobs_that_no_query_could_use_are_refused_at_load_by_file_and_key(tmp_path, text, message):
    """A model of T = 100 timesteps: depth 0.5 spans 50 of them, so 1,000,000 steps (or a depth of 1e-300, which
    spans none) would make every query fail later with a message that does not mention knobs.json."""
    ab_model().save_pretrained(tmp_path)
    (tmp_path / KNOBS_NAME).write_text(text)
    with pytest.raises(ValueError, match=message):
        CausalDiffAE.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        read_knobs(tmp_path)
    with pytest.raises(ValueError, match=message):
        read_knobs(tmp_path, 100)


def test_knobs_are_checked_against_the_given_timesteps_and_a_file_without_steps_keeps_the_default(tmp_path):
    (tmp_path / KNOBS_NAME).write_text('{"depth": 0.5, "guidance": 1, "steps": 60}')
    assert read_knobs(tmp_path).steps == 60  # no model config beside it: nothing to check the steps against
    assert read_knobs(tmp_path, 1000).steps == 60
    with pytest.raises(ValueError, match="steps 60 is more than the 50 timesteps"):
        read_knobs(tmp_path, 100)
    (tmp_path / KNOBS_NAME).write_text('{"depth": 0.3, "guidance": 1}')  # 30 timesteps: a call names its steps
    assert read_knobs(tmp_path, 100) == Knobs(0.3, 1.0, DEFAULT_STEPS, KNOBS_NAME)


def test_a_knobs_file_that_is_no_text_file_is_refused_by_name(tmp_path, capsys):
    path = tmp_path / KNOBS_NAME
    path.write_bytes('{"depth": 0.5, "guidance": 1, "chosen_by": "café"}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"knobs.json is not UTF-8 text: byte 0xe9 at offset 47"):
        read_knobs(tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.raises(ValueError, match="knobs.json is a folder where a file is needed"):
        read_knobs(tmp_path)
    path.rmdir()
    path.symlink_to(tmp_path / "gone.json")
    with pytest.raises(ValueError, match="knobs.json is a link to nothing"):
        read_knobs(tmp_path)
    ab_model().save_pretrained(tmp_path / "model")  # the command line: one line, exit code 2
    (tmp_path / "model" / KNOBS_NAME).mkdir()
    Image.new("L", (8, 8), 128).save(tmp_path / "x.png")
    assert exit_code(["counterfactual", str(tmp_path / "model"), "--image", str(tmp_path / "x.png"), "--do", "a=0.5",
                      "--out", str(tmp_path / "cf.png")]) == 2
    assert capsys.readouterr().err == (f"causaldiffae: error: {tmp_path / 'model' / KNOBS_NAME} is a folder where a "
                                       "file is needed (a model's knobs); remove it\n")

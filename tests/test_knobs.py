"""A model's own counterfactual knobs (knobs.json): read, written, refused when broken, and used where a call
or command names no depth or guidance weight."""

from __future__ import annotations

import json

import pytest
import torch

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.counterfactual import counterfactual
from causaldiffae.data import load_dataset
from causaldiffae.demo import SHIPPED_MODELS
from causaldiffae.knobs import DEFAULT_DEPTH, DEFAULT_GUIDANCE, KNOBS_NAME, Knobs, read_knobs, write_knobs
from causaldiffae.metrics.settings import Settings
from conftest import TINY, TINY_SIZE, ab_model, exit_code, predicting_no_noise


def test_a_folder_without_knobs_gets_the_global_defaults(tmp_path):
    assert read_knobs(tmp_path) == Knobs()
    assert (Knobs().depth, Knobs().guidance) == (DEFAULT_DEPTH, DEFAULT_GUIDANCE) == (0.5, 1.0)


def test_written_knobs_read_back_and_fill_only_what_a_call_leaves_open(tmp_path):
    path = write_knobs(tmp_path, Knobs(0.7, 1.0, "by hand"))
    assert path == tmp_path / KNOBS_NAME
    assert json.loads(path.read_text()) == {"depth": 0.7, "guidance": 1.0, "chosen_by": "by hand"}
    knobs = read_knobs(tmp_path)
    assert knobs == Knobs(0.7, 1.0, "by hand")
    assert knobs.resolve(None, None) == (0.7, 1.0)
    assert knobs.resolve(0.3, None) == (0.3, 1.0) and knobs.resolve(None, 2.0) == (0.7, 2.0)
    assert Settings().resolved(knobs).depth == 0.7 and Settings().resolved(knobs).guidance == 1.0
    assert Settings(depth=0.3, guidance=0.0).resolved(knobs).depth == 0.3  # a given value wins, 0 included
    assert Settings(depth=0.3, guidance=0.0).resolved(knobs).guidance == 0.0


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "corrupt knobs file"),
    ("[0.4, 1.5]", "JSON object with 'depth' and 'guidance'"),
    ('{"depth": 0.4}', "JSON object with 'depth' and 'guidance'"),
    ('{"depth": 0.0, "guidance": 1}', r"depth must lie in \(0, 1\]"),
    ('{"depth": 0.5, "guidance": -1}', "guidance must be >= 0"),
    ('{"depth": "0.5", "guidance": 1}', "depth must be a finite number"),
    ('{"depth": 0.5, "guidance": NaN}', "guidance must be a finite number"),
    ('{"depth": 0.5, "guidance": 1, "steps": 20}', r"unknown keys \['steps'\]"),
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


def test_the_shipped_models_carry_the_knobs_chosen_on_validation():
    """docs/results/*/tune/tune.md: Pendulum 0.5 / 1, MorphoMNIST 0.7 / 1."""
    assert (read_knobs(SHIPPED_MODELS["pendulum"]).depth, read_knobs(SHIPPED_MODELS["pendulum"]).guidance) == (0.5, 1.0)
    mm = read_knobs(SHIPPED_MODELS["morphomnist"])
    assert (mm.depth, mm.guidance) == (0.7, 1.0) and "val split" in mm.chosen_by


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
    assert f"wrote {tmp_path / 'model' / KNOBS_NAME}" in capsys.readouterr().out


def test_cli_help_names_the_models_own_default(capsys):
    assert exit_code(["counterfactual", "--help"]) == 0
    assert "the model's own, from its knobs.json, else 0.5" in " ".join(capsys.readouterr().out.split())


def _model_for(folder) -> CausalDiffAE:
    data = load_dataset(folder, TINY_SIZE)
    torch.manual_seed(0)
    return CausalDiffAE(ModelConfig(graph=data.graph.to_dict(), image_size=TINY_SIZE, channels=3, **TINY)).eval()

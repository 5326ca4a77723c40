"""The mechanisms as a user meets them: fit at the start of training (rows logged), `causaldiffae mechanisms RUN`,
--fit on an existing model, models saved before them, the deterministic-variable warning and `data check`."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from causaldiffae import CausalDiffAE
from causaldiffae.cli import main
from conftest import TINY_CONFIG, ab_model, exit_code


def _train(out: Path, data: Path, *sets: str) -> None:
    args = ["train", str(TINY_CONFIG), "--out", str(out), "--set", "data.name=folder", "--set", f"data.root={data}",
            "--set", "train.max_steps=2"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0


def _train_rows(data: Path) -> int:
    with (data / "labels.csv").open() as fh:
        return sum(row["split"] == "train" for row in csv.DictReader(fh))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    out = tmp_path_factory.mktemp("mechanisms") / "run"
    _train(out, tiny_dataset)
    return out


def test_training_fits_the_mechanisms_and_logs_their_rows(run: Path, tiny_dataset: Path) -> None:
    logged = json.loads((run / "mechanisms.json").read_text())
    assert [m["child"] for m in logged] == ["shadow_length", "shadow_position"]
    assert all(m["rows"] == _train_rows(tiny_dataset) for m in logged)
    model = CausalDiffAE.from_pretrained(run)
    assert model.config.label_mechanism == "spline"
    assert all(model.causal_layer.labels.fitted(m["child"]) is not None for m in logged)


def test_weak_supervision_fits_on_the_labelled_rows(tmp_path: Path, tiny_dataset: Path) -> None:
    _train(tmp_path / "run", tiny_dataset, "data.label_fraction=0.8")
    logged = json.loads((tmp_path / "run" / "mechanisms.json").read_text())
    assert all(m["fitted"] and 10 <= m["rows"] < _train_rows(tiny_dataset) for m in logged)


def test_mechanisms_command_reports_fit_and_counterfactual_errors(run: Path, tmp_path: Path, capsys) -> None:
    assert exit_code(["mechanisms", str(run), "--out", str(tmp_path / "check")]) == 0
    printed = capsys.readouterr().out
    assert "| shadow_length | angle, light |" in printed
    assert "do(angle) -> shadow_length" in printed and "do(light) -> shadow_position" in printed
    check = json.loads((tmp_path / "check" / "mechanisms.json").read_text())
    pairs = {(p["do"], p["child"]): p for p in check["counterfactual"]["pairs"]}
    assert set(pairs) == {(p, c) for p in ("angle", "light") for c in ("shadow_length", "shadow_position")}
    assert all(p["no_op"] > 0 and p["latents"] >= 0 for p in pairs.values())
    assert (tmp_path / "check" / "mechanisms.md").read_text().startswith("## Mechanisms (family: spline)")


def test_family_without_fit_is_refused(run: Path, capsys) -> None:
    assert exit_code(["mechanisms", str(run), "--family", "affine"]) == 2
    assert "--family and --steps go with --fit" in capsys.readouterr().err


def test_refit_changes_the_mechanisms_only(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = load_file(str(copy / "model.safetensors"))
    assert exit_code(["mechanisms", str(copy), "--fit", "--family", "affine", "--steps", "20"]) == 0
    after = load_file(str(copy / "model.safetensors"))
    assert CausalDiffAE.from_pretrained(copy).config.label_mechanism == "affine"
    kept = [k for k in before if not k.startswith("causal_layer.labels.")]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)  # the UNet and encoder are untouched


def test_a_model_saved_before_the_mechanisms_loads_with_the_mlp(run: Path, tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    shutil.copytree(run, legacy)
    payload = json.loads((legacy / "model_config.json").read_text())
    del payload["model"]["label_mechanism"]
    (legacy / "model_config.json").write_text(json.dumps(payload))
    weights = {k: v for k, v in load_file(str(legacy / "model.safetensors")).items()
               if not k.startswith("causal_layer.labels.")}
    save_file(weights, str(legacy / "model.safetensors"), metadata={"format": "causaldiffae"})
    model = CausalDiffAE.from_pretrained(legacy)
    assert model.config.label_mechanism == "none" and not len(model.causal_layer.labels.items)
    lat = model.encode(torch.rand(2, 3, 16, 16))
    z_cf = model.intervene(lat, {"angle": 10.0})
    i = model.graph.index("shadow_length")
    pa = torch.cat([z_cf[:, model.graph.index(p)] for p in model.graph.parents("shadow_length")], dim=-1)
    assert torch.allclose(z_cf[:, i], model.causal_layer.mechanisms["shadow_length"](pa) + lat.u[:, i])


def test_do_on_a_variable_its_parents_determine_warns_once_by_name() -> None:
    model = ab_model(label_mechanism="affine")
    mech = model.causal_layer.labels.items["b"]
    mech.rows.fill_(100)
    mech.r2.fill_(0.9993)
    lat = model.encode(torch.rand(2, 1, 8, 8))
    with pytest.warns(UserWarning, match=r"b is a deterministic function of a .*R\^2 0.9993"):
        model.intervene(lat, {"b": 0.5})
    mech.r2.fill_(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a child its parents explain at R^2 0.5 can be moved: no warning
        model.intervene(lat, {"b": 0.5})


def test_data_check_names_the_determined_variables(tiny_dataset: Path, capsys) -> None:
    assert exit_code(["data", "check", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert "shadow_length | angle, light: fit on" in out
    assert "R^2" in out


def test_the_command_line_warns_in_one_line(run: Path) -> None:
    """do() on a variable its parents determine: one line naming it, no source file or code line; the caller's
    warning format comes back after the command."""
    from causaldiffae.cli import _one_line_warning

    line = _one_line_warning(UserWarning("shadow_length is a deterministic function"), UserWarning, "x.py", 3)
    assert line == "causaldiffae: warning: shadow_length is a deterministic function\n"
    before = warnings.formatwarning
    assert exit_code(["mechanisms", str(run)]) == 0
    assert warnings.formatwarning is before

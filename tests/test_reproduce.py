"""reproduce's plan without training: the noise-abduction entries, the training-seed layout, the commands of the
parallel path, and the comparison over training seeds (the end-to-end run is in test_evaluation.py)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from causaldiffae import reproduce as rp
from causaldiffae.cli import build_parser
from causaldiffae.evaluation import portable
from causaldiffae.knobs import Knobs, read_knobs, write_knobs
from causaldiffae.metrics.suite import Settings
from causaldiffae.training import load_run_config
from conftest import CONFIGS

SMALL = Settings(n=4, seeds=(0, 1), steps=2, depth=0.7)
#: SMALL at the model's own steps (None), as `reproduce` without --steps.
SMALL_OWN = replace(SMALL, steps=None)


@pytest.mark.parametrize("dataset", sorted(rp.PLANS))
def test_plan_holds_the_noise_abduction_at_depth_one_and_at_the_default_depth(dataset):
    plan = {e.name: e for e in rp.PLANS[dataset]}
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) for name in plan)  # folder names
    reference = plan["causaldiffae-noise-abduction-depth1"]
    assert (reference.abduction, reference.depth, reference.reuse) == ("noise", 1.0, "causaldiffae")
    ours = plan["causaldiffae-noise-abduction"]
    assert (ours.abduction, ours.depth, ours.reuse) == ("noise", None, "causaldiffae")
    assert rp.entry_settings(reference, SMALL) == Settings(n=4, seeds=(0, 1), steps=2, depth=1.0, abduction="noise")
    assert rp.entry_settings(ours, SMALL) == Settings(n=4, seeds=(0, 1), steps=2, depth=0.7, abduction="noise")
    assert rp.entry_settings(plan["causaldiffae"], SMALL) == SMALL
    # without condition dropout the null branch is untrained: that row stays at w = 1 whatever the default
    assert rp.entry_settings(plan["causaldiffae-no-dropout"], replace(SMALL, guidance=1.5)).guidance == 1.0


def test_training_seeds_keep_the_flat_layout_for_the_config_seed_only():
    assert rp.training_seeds(None, 0) == [None] and rp.training_seeds([0], 0) == [None]
    assert rp.training_seeds([3], 0) == [3] and rp.training_seeds([0, 1, 2], 0) == [0, 1, 2]
    with pytest.raises(ValueError, match="repeats"):
        rp.training_seeds([1, 1], 0)


def test_runs_per_training_seed_and_reuse(tmp_path):
    plan = {e.name: e for e in rp.PLANS["pendulum"]}
    flat = rp.plan_runs(plan["causaldiffae"], tmp_path, [None], {})
    assert flat == [rp.Run(None, tmp_path / "causaldiffae", tmp_path / "causaldiffae" / "eval")]
    seeded = rp.plan_runs(plan["diffae-aligned"], tmp_path, [0, 1], {})
    assert [r.run for r in seeded] == [tmp_path / "diffae-aligned" / f"seed-{s}" for s in (0, 1)]
    assert [r.eval for r in seeded] == [tmp_path / "diffae-aligned" / f"seed-{s}" / "eval" for s in (0, 1)]
    reused = rp.plan_runs(plan["causaldiffae-noise-abduction-depth1"], tmp_path, [0, 1], {})
    assert [r.run for r in reused] == [tmp_path / "causaldiffae" / f"seed-{s}" for s in (0, 1)]  # every seed's run
    assert [r.eval for r in reused] == [tmp_path / "causaldiffae-noise-abduction-depth1" / f"seed-{s}" / "eval"
                                        for s in (0, 1)]
    used = rp.plan_runs(plan["causaldiffae-noise-abduction"], tmp_path, [0, 1], {"causaldiffae": "shipped"})
    assert used == [rp.Run(None, Path("shipped"), tmp_path / "causaldiffae-noise-abduction" / "eval")]


def test_parallel_train_command_sets_what_the_sequential_training_sets(tmp_path):
    config = CONFIGS / "pendulum.yaml"
    for seed, expected in [(None, 0), (2, 2)]:
        run = rp.Run(seed, tmp_path / "run", tmp_path / "run" / "eval")
        args = build_parser().parse_args(rp._train_args(config, run, 7))
        assert args.set == rp._overrides(7, seed) and not args.resume and args.out == str(run.run)
        loaded = load_run_config(config, args.set)
        assert (loaded.train.max_steps, loaded.train.seed) == (7, expected)


def test_reproduce_trains_and_evaluates_every_seed_in_both_paths(tmp_path, monkeypatch):
    """Training and evaluation stubbed: the sequential pass and the --jobs commands cover the same runs."""
    trained, evaluated, commands, data_used = [], [], {}, []

    def fake_evaluate(run, data, predictors, out, settings, progress):
        evaluated.append((run, out, settings.abduction, settings.depth))
        return _document([1.0, 1.0], abduction=settings.abduction, depth=settings.depth)

    monkeypatch.setattr(rp, "open_dataset", lambda *args: type("Data", (), {"root": tmp_path / "data"})())
    monkeypatch.setattr(rp, "_train", lambda config, run, steps, progress, seed=None, data_sets=():
                        trained.append((run, seed)) or data_used.append(data_sets))
    monkeypatch.setattr(rp, "_evaluate", fake_evaluate)
    monkeypatch.setattr(rp, "_parallel", lambda jobs, logs, n: commands.update(jobs))
    (tmp_path / "predictors").mkdir()
    (tmp_path / "predictors" / "predictors.json").write_text("{}")
    out = tmp_path / "out"
    rp.reproduce("pendulum", out, 3, SMALL, CONFIGS, predictors=tmp_path / "predictors", jobs=2, progress=False,
                 train_seeds=[0, 1], data_root=tmp_path / "own")
    own = ["data.name=folder", f"data.root={(tmp_path / 'own').resolve()}"]  # --data: every run trains on it
    assert data_used == [own] * 10
    assert sorted(trained) == sorted((out / e / f"seed-{s}", s) for e in ("causaldiffae", "causaldiffae-no-dropout",
                                     "diffae-aligned", "diffae-unaligned", "label-ddim") for s in (0, 1))
    assert len(evaluated) == 7 * 2
    assert (out / "causaldiffae" / "seed-1", out / "causaldiffae-noise-abduction-depth1" / "seed-1" / "eval",
            "noise", 1.0) in evaluated
    assert (out / "causaldiffae" / "seed-0", out / "causaldiffae-noise-abduction" / "seed-0" / "eval",
            "noise", 0.7) in evaluated
    assert sorted(k for k in commands if k.startswith("train-")) == sorted(f"train-{r.parent.name}-{r.name}"
                                                                           for r, _ in trained)
    assert commands["train-label-ddim-seed-1"][-6:] == ["--set", "train.seed=1", "--set", own[0], "--set", own[1]]
    assert len([k for k in commands if k.startswith("evaluate-")]) == 7 * 2
    depth1 = commands["evaluate-causaldiffae-noise-abduction-depth1-seed-0"]
    assert depth1[depth1.index("--depth") + 1] == "1.0" and depth1[depth1.index("--abduction") + 1] == "noise"
    assert "training seeds [0, 1]" in json.loads((out / "results.json").read_text())["budget"]


def _document(fids: list[float], abduction: str = "ddim", depth: float = 0.7) -> dict:
    """A metrics.json with one FID per evaluation seed."""
    return {"settings": {"n": 1, "seeds": list(range(len(fids))), "steps": 1, "depth": depth, "guidance": 1,
                         "abduction": abduction},
            "predictors": {}, "summary": {"dci": {"disentanglement": {"mean": 0.5, "std": 0.0}}},
            "seeds": [{"realism": {"fid": f}} for f in fids]}


def test_comparison_over_training_seeds(tmp_path):
    """Each training seed contributes its evaluation's mean; the row shows mean ± std over them."""
    rows = {"causaldiffae": [_document([1.0, 1.2]), _document([2.0, 2.2]), _document([3.0, 3.2])],
            "single": _document([0.5, 0.7])}
    rp.write_comparison("toy", rows, tmp_path, "none")
    result = json.loads((tmp_path / "results.json").read_text())
    fid = result["values"]["causaldiffae"]["FID"]
    assert fid["mean"] == pytest.approx(2.1) and fid["values"] == pytest.approx([1.1, 2.1, 3.1])
    assert fid["std"] == pytest.approx((2 / 3) ** 0.5)  # over training seeds, not the 0.1 over evaluation seeds
    assert result["values"]["single"]["FID"]["std"] == pytest.approx(0.1)
    assert result["training_seeds"] == {"causaldiffae": 3, "single": 1}
    assert result["dci"]["causaldiffae"]["disentanglement"]["mean"] == 0.5
    table = (tmp_path / "results.md").read_text()
    assert "| model | training seeds |" in table
    assert re.search(r"\| causaldiffae \| 3 \| .*2\.1 ± 0\.82", table) and "| single | 1 |" in table


def test_beats_uses_the_training_spread(tmp_path):
    """A model whose runs differ a lot between training seeds wins nowhere, though each evaluation is tight."""
    ours = [_document([1.0, 1.0]), _document([1.0, 1.0])]
    cases = {"steady": [_document([0.5, 0.5]), _document([0.5, 0.5])],
             "unsteady": [_document([0.1, 0.1]), _document([1.4, 1.4])]}  # mean 0.75, training std 0.65
    rp.write_comparison("toy", {"causaldiffae": ours, **cases}, tmp_path, "none")
    beaten = json.loads((tmp_path / "results.json").read_text())["beaten"]
    assert beaten == ["steady beats causaldiffae on FID: 0.5 ± 0 vs 1 ± 0"]
    one_seed = {"causaldiffae": ours[:1], "unsteady": cases["unsteady"][:1]}  # one training seed: eval spread 0
    rp.write_comparison("toy", one_seed, tmp_path, "none")
    assert json.loads((tmp_path / "results.json").read_text())["beaten"] == [
        "unsteady beats causaldiffae on FID: 0.1 ± 0 vs 1 ± 0"]


def test_rows_evaluated_otherwise_are_named(tmp_path):
    fewer_steps = _document([1.0])
    fewer_steps["settings"]["steps"] = 20  # each model at its own knobs: its steps too
    rows = {"causaldiffae": _document([1.0]), "noise-depth1": _document([1.0], abduction="noise", depth=1.0),
            "quick": fewer_steps}
    rp.write_comparison("toy", rows, tmp_path, "none")
    text = (tmp_path / "results.md").read_text()
    assert "abduction ddim, depth 0.7" in text and "noise-depth1 (abduction noise, depth 1.0)" in text
    assert "quick (steps 20)" in text


def test_an_evaluation_is_reused_only_at_the_models_current_steps(tmp_path):
    """metrics.json records the steps used (settings resolved against the model's knobs): reproduce reuses it
    while the model's knobs.json still says those steps, and evaluates again once its steps knob changes."""
    run, out = tmp_path / "run", tmp_path / "eval"
    run.mkdir()
    out.mkdir()
    write_knobs(run, Knobs(0.7, 1.0, 20))
    recorded = asdict(SMALL_OWN.resolved(read_knobs(run)))
    assert recorded["steps"] == 20
    (out / "metrics.json").write_text(json.dumps({"settings": recorded, "run": portable(run)}))
    assert rp._evaluated(run, out, SMALL_OWN)
    write_knobs(run, Knobs(0.7, 1.0, 10))
    assert not rp._evaluated(run, out, SMALL_OWN)
    assert rp._evaluated(run, out, replace(SMALL_OWN, steps=20))  # named steps: the knob no longer matters


def test_beats_knows_each_columns_direction():
    """Gap closed wins by being higher; a floor (the oracle, the inputs' FID) never wins."""
    ours, theirs = {"mean": 0.5, "std": 0.0}, {"mean": 0.8, "std": 0.0}
    assert rp._beats(theirs, ours, "higher") and not rp._beats(theirs, ours, "lower")
    assert rp._beats(ours, theirs, "lower") and not rp._beats(ours, theirs, "floor")
    assert {c.header: c.better for c in rp.COLUMNS}["gap closed (intervened var.)"] == "higher"
    assert {c.better for c in rp.COLUMNS if c.header.startswith("oracle")} == {"floor"}


def test_intervened_column_reads_numbers_and_errors():
    """'@' takes the intervened variable's normalised MAE, or its number where the entry is one (gap closed)."""
    seed = {"effectiveness": {"do(a)": {"a": {"mae_normalized": 0.2}}, "do(b)": {"b": {"mae_normalized": 0.4}},
                              "multi": {"a": {"mae_normalized": 9.0}}},
            "gap_closed": {"do(a)": {"a": 0.5}, "do(b)": {"b": 1.0}}}
    assert rp.column_value(seed, ("effectiveness", "*", "@")) == pytest.approx(0.3)  # (0.2 + 0.4) / 2, no multi
    assert rp.column_value(seed, ("gap_closed", "*", "@")) == pytest.approx(0.75)


def test_measured_columns_read_the_intervened_variable_below_truth():
    """'@' inside a path: truth -> do(X) -> morphometry -> X; the class kept averages over do(X)."""
    seed = {"truth": {"do(a)": {"morphometry": {"a": {"mae_normalized": 0.1}, "b": {"mae_normalized": 7.0}}},
                      "do(b)": {"morphometry": {"a": {"mae_normalized": 7.0}, "b": {"mae_normalized": 0.3}}}},
            "class_kept": {"do(a)": {"model": 0.9, "oracle": 1.0}, "do(b)": {"model": 1.0, "oracle": 1.0},
                           "multi": {"model": 0.0}}}
    assert rp.column_value(seed, ("truth", "*", "morphometry", "@")) == pytest.approx(0.2)
    assert rp.column_value(seed, ("class_kept", "*", "model")) == pytest.approx(0.95)


def test_label_fraction_entries_and_only():
    entries = rp.label_fraction_entries("morphomnist", [0.1, 1.0, 0.3, 0.1])
    assert [(e.name, e.sets, e.label_fraction) for e in entries] == [
        ("causaldiffae-labels-0.3", ("data.label_fraction=0.3",), 0.3),
        ("causaldiffae-labels-0.1", ("data.label_fraction=0.1",), 0.1)]
    assert all(e.config == "morphomnist.yaml" and e.reuse is None for e in entries)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        rp.label_fraction_entries("pendulum", [0.0])
    plan = rp.PLANS["pendulum"] + entries
    picked = rp.select(plan, ["causaldiffae-noise-abduction", "causaldiffae-labels-0.1"])
    assert [e.name for e in picked] == ["causaldiffae", "causaldiffae-noise-abduction", "causaldiffae-labels-0.1"]
    with pytest.raises(ValueError, match="unknown entries"):
        rp.select(plan, ["nope"])


def test_weak_supervision_table_and_plot(tmp_path):
    """Rows by labelled share, largest first; columns nobody has (here all but FID) are left out of the table."""
    rows = {"causaldiffae-labels-0.1": _document([3.0]), "causaldiffae": _document([1.0]),
            "causaldiffae-labels-0.3": _document([2.0])}
    for doc, mae in zip(rows.values(), (0.5, 0.1, 0.2), strict=True):
        doc["seeds"][0]["effectiveness"] = {"do(a)": {"a": {"mae_normalized": mae}}}
    fractions = {"causaldiffae": 1.0, "causaldiffae-labels-0.3": 0.3, "causaldiffae-labels-0.1": 0.1}
    rp.write_comparison("toy", rows, tmp_path, "none", fractions=fractions)
    text = (tmp_path / "results.md").read_text()
    assert "true-cf L1" not in text.split("## Where")[0] and "| FID |" in text
    weak = text.split("## Weak supervision")[1]
    assert re.findall(r"\| (0\.1|0\.3|1) \| (\S+) \| ([\d.]+)", weak) == [
        ("1", "causaldiffae", "0.1"), ("0.3", "causaldiffae-labels-0.3", "0.2"),
        ("0.1", "causaldiffae-labels-0.1", "0.5")]
    assert (tmp_path / "weak-supervision.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "results.json").read_text())["label_fractions"] == fractions


def test_reproduce_trains_label_fraction_entries_with_their_fraction(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(rp, "open_dataset", lambda *args: type("Data", (), {"root": tmp_path / "data"})())
    monkeypatch.setattr(rp, "_train", lambda config, run, steps, progress, seed=None, data_sets=():
                        trained.append((run.name, list(data_sets))))
    monkeypatch.setattr(rp, "_evaluate", lambda *args: _document([1.0]))
    (tmp_path / "predictors").mkdir()
    (tmp_path / "predictors" / "predictors.json").write_text("{}")
    rp.reproduce("pendulum", tmp_path / "out", 3, SMALL, CONFIGS, predictors=tmp_path / "predictors", progress=False,
                 label_fractions=[0.1], only=["causaldiffae", "causaldiffae-labels-0.1"])
    assert trained == [("causaldiffae", []), ("causaldiffae-labels-0.1", ["data.label_fraction=0.1"])]
    text = (tmp_path / "out" / "results.md").read_text()
    assert "## Weak supervision" in text and "None of the curve's metrics applies" in text

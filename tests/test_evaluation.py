"""The evaluation suite on known cases: perfect predictions, a model that returns the factual image, exact
inverses; the report, the CLI and reproduce on tiny data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.data import load_dataset
from causaldiffae.knobs import Knobs
from causaldiffae.metrics.effectiveness import attribute_errors, movement, non_descendant_change
from causaldiffae.metrics.predictors import Predictors, interventional_errors, save_predictors
from causaldiffae.metrics.report import fmt, markdown, metrics_document, summarize
from causaldiffae.metrics.settings import Settings, parse_seeds
from causaldiffae.metrics.suite import _Context, evaluate
from causaldiffae.metrics.truth import known_labels, morphometry_labels, true_scm
from causaldiffae.reproduce import column_value, write_comparison
from conftest import CONFIGS, TINY, TINY_SIZE, exit_code, predicting_no_noise

#: No steps named: the suite runs at the model's own (the identity model's knobs say 3).
SMALL = Settings(n=8, seeds=(0, 1), batch_size=4, subset=4, cycles=3, weights=(0.0, 1.0, 2.0), dci_samples=40,
                 examples=2)


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return load_dataset(tiny_dataset, TINY_SIZE)


@pytest.fixture(scope="module")
def identity_model(dataset) -> CausalDiffAE:
    """A model that predicts eps = 0, so DDIM inversion then decoding returns the factual image exactly (up to
    rounding): a model whose counterfactual is the factual image. Its knobs say 3 DDIM steps."""
    torch.manual_seed(0)
    config = ModelConfig(graph=dataset.graph.to_dict(), image_size=TINY_SIZE, channels=3, **TINY)
    model = predicting_no_noise(CausalDiffAE(config).eval())
    model.knobs = Knobs(steps=3)
    return model


@pytest.fixture(scope="module")
def judges(dataset) -> Predictors:
    torch.manual_seed(0)
    judges = Predictors(dataset.graph, TINY_SIZE, 3, width=4).eval()
    judges.held_out_interventional = interventional_errors(judges, dataset.split("test"), count=4)
    return judges


@pytest.fixture(scope="module")
def results(identity_model, dataset, judges) -> dict:
    return evaluate(identity_model, dataset, judges, SMALL, progress=False)


# -- the metric functions ----------------------------------------------------------------------------------


def test_perfect_predictions_give_zero_effectiveness(dataset):
    labels = dataset.labels[:10]
    intended = known_labels(dataset.graph, labels, {"angle": torch.full((10,), 5.0)})
    errors = attribute_errors(dataset.graph, torch.nan_to_num(intended, 7.0), intended)
    assert set(errors) == {"angle", "light"}  # descendants of angle are unknown without the SCM: not scored
    assert all(e["mae"] == 0 and e["mae_normalized"] == 0 for e in errors.values())


def test_known_labels_without_an_scm(dataset):
    labels = dataset.labels[:3]
    intended = known_labels(dataset.graph, labels, {"light": torch.tensor([60.0, 70.0, 80.0])})
    assert torch.equal(intended[:, 0], labels[:, 0])  # angle: not a descendant of light
    assert intended[:, 1].tolist() == [60.0, 70.0, 80.0]
    assert torch.isnan(intended[:, 2:]).all()


def test_effectiveness_is_in_raw_and_normalised_units(dataset):
    graph = dataset.graph
    intended = dataset.labels[:4].clone()
    predicted = intended.clone()
    predicted[:, 0] += graph["angle"].scale[1] * 0.5  # half a normalisation unit off
    errors = attribute_errors(graph, predicted, intended)
    assert math.isclose(errors["angle"]["mae_normalized"], 0.5, rel_tol=1e-4)
    assert math.isclose(errors["angle"]["mae"], graph["angle"].scale[1] * 0.5, rel_tol=1e-4)


def test_minimality_reads_only_the_non_descendants(dataset):
    graph = dataset.graph
    before = dataset.labels[:4]
    after = before.clone()
    after[:, 2] += 100  # shadow_length moves: allowed under do(angle)
    moved = movement(graph, before, after)
    assert non_descendant_change(graph, ["angle"], moved) == 0  # light did not move
    after[:, 1] += graph["light"].scale[1]
    assert math.isclose(non_descendant_change(graph, ["angle"], movement(graph, before, after)), 1.0, rel_tol=1e-4)


def test_true_scm_reproduces_the_factual_images(dataset):
    test = dataset.split("test")
    scm = true_scm(test)
    assert scm is not None and scm.kind == "pendulum"
    images, labels = scm.counterfactual([0, 1, 2], {})
    assert torch.equal((images * 255).round().to(torch.uint8), test.images[:3])
    assert torch.allclose(labels, test.labels[:3], atol=1e-4)


def test_random_interventions_render_the_true_scm(dataset):
    """Each render is the SCM's image of its labels; a shadow label off its physical value means an intervened
    shadow (the decorrelated images interventional predictors train on); values stay in each range."""
    from causaldiffae.data import pendulum

    scm = true_scm(dataset.split("train"))
    images, labels, rows = scm.random_interventions(40, torch.Generator().manual_seed(0))
    assert images.dtype == torch.uint8 and images.shape == (40, 3, TINY_SIZE, TINY_SIZE) and rows.shape == (40,)
    for image, label in zip(images[:5], labels[:5].tolist(), strict=True):
        angle, light, length, position = label
        drawn = pendulum.render(angle, light, TINY_SIZE, shadow_length=length, shadow_position=position)
        assert torch.equal(image, torch.from_numpy(drawn).permute(2, 0, 1))
    physical = torch.tensor([pendulum.shadow(a, li) for a, li in labels[:, :2].tolist()])
    assert (physical - labels[:, 2:]).abs().max(dim=1).values.gt(1e-3).float().mean() > 0.3
    for i, name in enumerate(pendulum.VARIABLES):
        lo, hi = scm.value_range(name)
        assert labels[:, i].min() >= lo - 1e-4 and labels[:, i].max() <= hi + 1e-4
    assert all(pendulum.shadow_in_view(length, position) for length, position in labels[:, 2:].tolist())
    # on= one variable: only it leaves the source row's labels, and every shadow stays in view
    images, labels, rows = scm.random_interventions(20, torch.Generator().manual_seed(1), on=["shadow_position"])
    source = scm.dataset.labels[rows]
    assert torch.allclose(labels[:, :3], source[:, :3], atol=1e-4)
    assert (labels[:, 3] - source[:, 3]).abs().gt(1e-3).all()
    assert all(length / 2 <= position <= 20 - length / 2 for length, position in labels[:, 2:].tolist())
    with pytest.raises(ValueError, match="on must name"):
        scm.random_interventions(2, torch.Generator(), on=["tilt"])


def test_shadow_in_view_by_hand():
    from causaldiffae.data import pendulum

    # the axes span x in [0, 20]: a shadow of length 4 centred at 2 just fits, at 1.9 it is cut off
    assert pendulum.shadow_in_view(4.0, 2.0) and not pendulum.shadow_in_view(4.0, 1.9)
    assert pendulum.shadow_in_view(4.0, 18.0) and not pendulum.shadow_in_view(4.0, 18.1)


def test_summarize_gives_mean_and_spread():
    out = summarize([{"a": 1.0, "b": {"c": 2.0}, "l": [1.0, 3.0], "flag": True},
                     {"a": 3.0, "b": {"c": 2.0}, "l": [3.0, 5.0], "flag": True}])
    assert out["a"] == {"mean": 2.0, "std": 1.0, "values": [1.0, 3.0]}
    assert out["b"]["c"]["std"] == 0 and out["l"]["mean"] == [2.0, 4.0] and out["flag"] is True
    assert fmt(out["a"]) == "2 ± 1"
    # nothing to measure (do(root) of a graph whose other variables all descend from it): a dash, not "nan ± nan"
    assert fmt({"mean": float("nan"), "std": float("nan"), "values": [float("nan")] * 2}) == "–"
    assert fmt({"mean": None, "std": None, "values": [None, None]}) == "–"


def test_parse_seeds_names_bad_input():
    assert parse_seeds("0, 1,2") == (0, 1, 2)
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_seeds("0,x")


def test_settings_and_their_flags_round_trip():
    """The flags of `evaluate` and `reproduce` come from Settings: the flags of a Settings parse back to it; a
    depth, weight or steps of None (the run's own knobs) is left out, and the defaults are Settings' own."""
    import argparse

    from causaldiffae.metrics.settings import add_flags, from_flags

    parser = argparse.ArgumentParser()
    add_flags(parser, {"n": int, "steps": int, "batch_size": int, "subset": int, "guidance": float, "depth": float})
    assert from_flags(parser.parse_args([])) == Settings()
    chosen = Settings(n=8, seeds=(0, 3), steps=20, depth=0.7, abduction="ddim", solver="dpm++2m", batch_size=5,
                      subset=0, known_labels=True)
    assert chosen.flags() == ["--n", "8", "--seeds", "0,3", "--steps", "20", "--depth", "0.7", "--abduction", "ddim",
                              "--solver", "dpm++2m", "--precision", "fp32", "--known-labels", "--batch-size", "5",
                              "--subset", "0"]
    assert from_flags(parser.parse_args(chosen.flags())) == chosen
    with pytest.raises(ValueError, match="--guidance must be a finite number"):
        Settings(guidance=float("inf"))
    with pytest.raises(ValueError, match=r"abduction must be one of \['exact', 'ddim', 'noise'\], got 'fresh'"):
        Settings(abduction="fresh")
    with pytest.raises(ValueError, match=r"'dpm\+\+2m' cannot decode the 'exact' abduction"):
        Settings(solver="dpm++2m")  # the default abduction keeps residuals of DDIM steps


# -- the suite on a model that returns the factual image -------------------------------------------------


def test_identity_model_sits_on_the_noop_floor(results):
    """A model that returns the factual image reaches exactly the no-op floor, for every intervention."""
    for seed in results["seeds"]:
        for key, per_variable in seed["noop_floor"].items():
            for name, floor in per_variable.items():
                got = seed["effectiveness"][key][name]["mae_normalized"]
                assert math.isclose(got, floor["mae_normalized"], rel_tol=1e-3, abs_tol=1e-4), (key, name)
            truth = seed["truth"][key]
            assert math.isclose(truth["l1"], truth["factual_l1"], rel_tol=1e-3, abs_tol=1e-3)
            assert truth["closer_than_factual"] == 0
            # (noop - model) / (noop - oracle) with model == noop closes none of the gap
            for name, gap in seed["gap_closed"][key].items():
                assert gap is None or abs(gap) < 1e-2, (key, name, gap)


def test_oracle_row_and_gap_closed_cover_every_intervention(results, dataset):
    """Every intervention has an oracle row; gap_closed covers exactly what the intervention changes (the
    intervened variable and its descendants; every variable for the multi-variable row)."""
    seed = results["seeds"][0]
    assert set(seed["oracle"]) == set(seed["effectiveness"])
    assert set(seed["gap_closed"]["do(angle)"]) == {"angle", "shadow_length", "shadow_position"}
    assert set(seed["gap_closed"]["do(shadow_length)"]) == {"shadow_length"}
    assert set(seed["gap_closed"]["multi"]) == set(dataset.graph.variables)
    assert "oracle_cld" in seed["minimality"]["do(angle)"]
    assert "oracle_moved" in seed["dag_consistency"]["do(angle)"]["light"]


def test_gap_closed_by_hand():
    from causaldiffae.metrics.suite import gap_closed

    assert gap_closed(0.5, 0.2, 0.1) == pytest.approx(0.75)  # (0.5 - 0.2) / (0.5 - 0.1)
    assert gap_closed(0.5, 0.5, 0.1) == 0 and gap_closed(0.5, 0.1, 0.1) == 1
    assert gap_closed(0.3, 0.1, 0.3) is None  # the floors coincide: nothing to close


def test_realism_reference_is_disjoint_from_the_inputs(results, dataset):
    """FID/KID compare with the train split (no test image in it) and count the images on each side."""
    realism = results["seeds"][0]["realism"]
    assert realism["reference"] == "train split"
    assert realism["reference_images"] == dataset.splits.count("train")
    assert realism["images"] == realism["images_factual"] == SMALL.n
    # the identity model returns its inputs: the same colour cast, up to DDIM round-off
    assert realism["colour_cast"] == pytest.approx(realism["colour_cast_factual"], abs=0.05)


def test_exact_inverse_composes_to_zero(results):
    for seed in results["seeds"]:
        assert seed["composition"]["l1_1"] < 0.01 and seed["composition"]["l1_3"] < 0.05  # 0-255 scale
        assert seed["reversibility_l1"] < 0.02
        for point in seed["guidance_sweep"].values():
            assert point["null_l1"] < 0.05


def test_suite_reports_every_metric(results):
    seed = results["seeds"][0]
    assert results["true_scm"] == "pendulum" and results["variables"] == ["angle", "light", "shadow_length",
                                                                         "shadow_position"]
    assert set(seed["effectiveness"]) == {"do(angle)", "do(light)", "do(shadow_length)", "do(shadow_position)",
                                          "multi"}
    assert set(seed["guidance_sweep"]) == {"w=0", "w=1", "w=2"}
    assert {"fid", "kid", "fid_factual"} <= set(seed["realism"])
    assert 0 <= seed["dci"]["disentanglement"] <= 1 and 0 <= seed["dci"]["block_completeness"] <= 1
    dag = seed["dag_consistency"]["do(angle)"]
    assert dag["light"]["allowed"] is False and dag["shadow_length"]["allowed"] is True
    assert dag["light"]["true_change"] == 0
    assert all(math.isfinite(m["cld"]) for m in seed["minimality"].values())


def test_the_suite_records_the_steps_it_used(results):
    """Settings that name no steps run at the model's own, and metrics.json's settings say which."""
    assert SMALL.steps is None and results["settings"]["steps"] == 3
    assert "3 steps" in markdown(metrics_document(results, {}))


def test_seeds_draw_different_interventions(results):
    a, b = (s["effectiveness"]["do(angle)"]["angle"]["mae"] for s in results["seeds"])
    assert a != b


def test_suite_rejects_predictors_of_another_graph(identity_model, dataset):
    other = dataset.graph.to_dict()
    other["variables"] = other["variables"][:2]
    other["edges"] = []
    with pytest.raises(ValueError, match="predictors read"):
        evaluate(identity_model, dataset, Predictors(other, TINY_SIZE, 3, width=4), SMALL, progress=False)


# -- CLI and reproduce ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, identity_model, judges) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    identity_model.save_pretrained(root / "model")
    save_predictors(judges, root / "predictors")
    return root / "model", root / "predictors"


def test_cli_evaluate_writes_the_report(tmp_path, saved, tiny_dataset):
    model, predictors = saved
    out = tmp_path / "report"
    assert exit_code(["evaluate", str(model), "--data", str(tiny_dataset), "--predictors", str(predictors),
                      "--out", str(out), "--n", "4", "--seeds", "0", "--steps", "2", "--subset", "2",
                      "--batch-size", "4"]) == 0
    document = json.loads((out / "metrics.json").read_text())
    assert document["summary"]["reversibility_l1"]["mean"] < 0.02
    assert document["settings"]["n"] == 4 and document["device"]
    report = (out / "report.md").read_text()
    for heading in ("Effectiveness", "true counterfactual", "cycle, idempotence and reversibility", "Mechanisms",
                    "Minimality", "Realism", "DCI", "u, per variable block", "DAG consistency", "Guidance sweep",
                    ": oracle", "Gap closed", "train split", "colour cast",
                    "do(shadow_length): shadow_length error"):
        assert heading in report, heading
    # the exact abduction returns any image: the decoder's cycle is measured with the plain inversion instead
    assert document["settings"]["abduction"] == "exact"
    assert document["seeds"][0]["composition"]["abduction"] == "ddim" and "(ddim inversion" in report
    assert (out / "guidance-sweep.png").stat().st_size > 0
    assert (out / "examples-do-angle.png").stat().st_size > 0


def test_cli_evaluate_names_bad_input(tmp_path, saved, tiny_dataset, capsys):
    model, predictors = saved
    base = ["evaluate", str(model), "--data", str(tiny_dataset), "--out", str(tmp_path / "r")]
    assert exit_code([*base, "--predictors", str(tmp_path / "none")]) == 2
    assert exit_code([*base, "--predictors", str(predictors), "--seeds", "a"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_reproduce_trains_evaluates_and_reuses(tmp_path, tiny_dataset, saved):
    configs = tmp_path / "configs"
    (configs / "baselines").mkdir(parents=True)
    for path in CONFIGS.glob("baselines/pendulum-*.yaml"):
        (configs / "baselines" / path.name).write_text(path.read_text())
    (configs / "pendulum.yaml").write_text(f"extends: {CONFIGS / 'tiny.yaml'}\n"
                                           f"data: {{name: folder, root: {tiny_dataset}}}\n")
    args = ["reproduce", "pendulum", "--out", str(tmp_path / "out"), "--train-steps", "2", "--configs",
            str(configs), "--predictors", str(saved[1]), "--n", "4", "--seeds", "0", "--steps", "2",
            "--subset", "0", "--batch-size", "4"]
    assert exit_code(args) == 0
    table = (tmp_path / "out" / "results.md").read_text()
    for name in ("causaldiffae", "diffae-aligned", "diffae-unaligned", "label-ddim", "causaldiffae-no-dropout",
                 "causaldiffae-noise-abduction", "causaldiffae-noise-abduction-depth1"):
        assert f"| {name} |" in table, name
    values = json.loads((tmp_path / "out" / "results.json").read_text())["values"]
    assert values["label-ddim"]["true-cf L1"] is not None
    stamp = (tmp_path / "out" / "causaldiffae" / "eval" / "metrics.json").stat().st_mtime_ns
    assert exit_code(args) == 0  # everything finished is reused, nothing is redone
    assert (tmp_path / "out" / "causaldiffae" / "eval" / "metrics.json").stat().st_mtime_ns == stamp


def test_column_value_averages_single_interventions():
    seed = {"effectiveness": {"do(a)": {"a": {"mae_normalized": 0.2}, "b": {"mae_normalized": 1.0}},
                              "do(b)": {"a": {"mae_normalized": 1.0}, "b": {"mae_normalized": 0.4}},
                              "multi": {"a": {"mae_normalized": 9.0}}},
            "realism": {"fid": 3.0}}
    assert math.isclose(column_value(seed, ("effectiveness", "*", "@")), 0.3)
    assert math.isclose(column_value(seed, ("effectiveness", "*", "**")), 0.65)
    assert column_value(seed, ("realism", "fid")) == 3.0
    assert column_value(seed, ("truth", "*", "l1")) is None


def test_comparison_calls_a_win_only_beyond_the_spread(tmp_path):
    def document(fids):
        seeds = [{"realism": {"fid": f}} for f in fids]
        return {"settings": {"n": 1, "seeds": [0, 1], "steps": 1, "depth": 1, "guidance": 1}, "predictors": {},
                "summary": {}, "seeds": seeds}

    rows = {"causaldiffae": document([1.0, 1.2]), "close": document([1.0, 1.1]), "far": document([0.1, 0.1])}
    write_comparison("toy", rows, tmp_path, "none")
    beaten = json.loads((tmp_path / "results.json").read_text())["beaten"]
    assert beaten == ["far beats causaldiffae on FID: 0.1 ± 0 vs 1.1 ± 0.1"]


def test_morphomnist_scores_morphometry_against_the_true_counterfactual(tmp_path):
    """On generated MorphoMNIST the suite knows the SCM: do(thickness) recomputes intensity, renders the truth and
    measures the counterfactuals' thickness and intensity by morphometry."""
    from causaldiffae.data import morphomnist

    data = load_dataset(morphomnist.generate(tmp_path / "mm", limit=6, seed=1, progress=False, workers=1), 28)
    torch.manual_seed(0)
    model = CausalDiffAE(ModelConfig(graph=data.graph.to_dict(), image_size=28, channels=1, **TINY)).eval()
    settings = Settings(n=4, seeds=(0,), steps=2, batch_size=4, subset=2, cycles=2, weights=(1.0,),
                        dci_samples=6, examples=1)
    torch.manual_seed(0)
    judges = Predictors(data.graph, 28, 1, width=4, num_classes=10).eval()
    result = evaluate(model, data, judges, settings, progress=False)
    seed = result["seeds"][0]
    assert result["true_scm"] == "morphomnist"
    morpho = seed["truth"]["do(thickness)"]["morphometry"]
    assert set(morpho) == {"thickness", "intensity"}
    # the model returns the factual image: morphometry reads the factual thickness, off by the intervention
    assert morpho["thickness"]["mae"] > 0 and math.isfinite(morpho["intensity"]["mae"])
    assert "intensity" in seed["effectiveness"]["do(thickness)"]  # a descendant with a known SCM is scored
    for key in ("do(thickness)", "do(intensity)"):
        truth = seed["truth"][key]
        # ... so it measures exactly as the factual image does: the model sits on the morphometry no-op floor
        for v in ("thickness", "intensity"):
            assert truth["morphometry"][v]["mae"] == pytest.approx(truth["morphometry_noop"][v]["mae"], abs=1e-6)
        # the true counterfactual is rendered to the intended values: measurement error only (datasets.md)
        assert truth["morphometry_oracle"]["thickness"]["mae"] < 0.3
        assert truth["morphometry_oracle"]["intensity"]["mae"] < 2
    # the counterfactual is the factual image, so the classifier reads the same digit in every one of them
    assert set(seed["class_kept"]) == {"do(thickness)", "do(intensity)", "multi"}
    for kept in seed["class_kept"].values():
        assert kept["model"] == 1.0 and 0 <= kept["oracle"] <= 1
    # the no-op floor measures the factual test images, each once
    context = _Context(model, data, judges, settings)
    measured = context._factual_morphometry(torch.tensor([2, 0, 2]))
    assert torch.equal(measured, morphometry_labels(data.split("test").batch([2, 0, 2])["image"]))
    assert sorted(context._morphometry) == [0, 2]
    report = markdown(metrics_document(result, {}))
    assert "## The class kept" in report and "| do(thickness) | 1 |" in report
    for row in ("| do(thickness) |", "| do(thickness): no-op floor |", "| do(thickness): oracle |"):
        assert row in report.split("### Morphometry")[1]
    # the instrument's own table: the classifier's accuracy beside the regressors' errors
    result["predictors"] = {"thickness": {"mae": 0.1, "mae_normalized": 0.04, "n": 4}, "digit": {"accuracy": 0.75,
                                                                                                 "n": 4}}
    instrument = markdown(metrics_document(result, {})).split("## Effectiveness")[0]
    assert "| thickness | 0.1 | 0.04 |" in instrument and "| digit | accuracy 0.75 | – |" in instrument


def test_class_kept_needs_a_classifier(results):
    """Predictors without a class classifier (the Pendulum fixtures): no class_kept, and no table for it."""
    assert "class_kept" not in results["seeds"][0]
    assert "The class kept" not in markdown(metrics_document(results, {}))


def test_summarize_skips_metrics_that_did_not_apply():
    """metrics.json writes a non-finite number as null: the summary treats it as missing (NaN), not a crash."""
    out = summarize([{"r": None, "a": 1.0}, {"r": 2.0, "a": 3.0}])
    assert out["a"]["mean"] == 2.0 and math.isnan(out["r"]["mean"]) and out["r"]["values"][1] == 2.0
    assert summarize([None, None]) is None


def test_portable_paths_name_no_absolute_path(tmp_path, monkeypatch):
    """Committed reports hold no absolute paths: under the working folder relative, under home with ~, elsewhere
    relative to the working folder (../shared/data/... as the benchmark records the published digits)."""
    from causaldiffae.evaluation import portable

    work = tmp_path / "work" / "main"
    (work / "runs").mkdir(parents=True)
    (tmp_path / "work" / "shared").mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert portable(work / "runs") == "runs"
    assert portable(tmp_path / "work" / "shared") == "../shared"

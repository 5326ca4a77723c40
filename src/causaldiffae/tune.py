"""``causaldiffae tune RUN``: choose the inversion depth and guidance weight on the validation split.

Every knob a reported number depends on is chosen here, on images no reported number comes from (the test
split stays untouched). For each depth, ``n`` validation images are abducted once (DDIM inversion); each image
gets a do() on one variable (variables in turn, values drawn from the split's labels, as the evaluation suite
draws them) and is decoded at every guidance weight, with and without the intervention. Scored per (depth, w):
the L1 to the true counterfactual where the SCM is known (the criterion), the predictors' error on the
intervened variable when predictors are given (and the share of images whose class their classifier reads as
before), on MorphoMNIST the intervened variable's error measured by morphometry, and the null intervention's L1
to the input (composition). Every cell runs at one number of DDIM steps (the model's own unless given): the
chosen depth and weight belong to it, so ``--apply`` writes it into the knobs beside them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import config as cfg
from .atomic import write_text
from .counterfactual import Solver, sweep
from .data.base import ImageDataset
from .knobs import DEFAULT_ABDUCTION, DEFAULT_STEPS, Abduction, check_decoding
from .metrics.effectiveness import normalized
from .metrics.predictors import Predictors
from .metrics.report import fmt, table, to_json
from .metrics.settings import ABDUCTION_HELP, MODEL_KNOBS, SOLVER_HELP
from .metrics.suite import pixel_l1
from .metrics.truth import known_labels, morphometry_labels, true_scm
from .model import CausalDiffAE


@dataclass
class TuneSettings:
    """The grid and the budget of a tuning run; saved with its table. Each field is a flag of ``causaldiffae
    tune`` (``config.add_flags``)."""

    depths: tuple[float, ...] = cfg.flag((0.3, 0.4, 0.5, 0.7, 0.85, 1.0), "inversion depths")
    weights: tuple[float, ...] = cfg.flag((1.0, 1.5, 2.0), "guidance weights", option="--guidance")
    n: int = cfg.flag(64, "validation images, one do() each")
    steps: int | None = cfg.flag(None, f"DDIM steps of every cell ({MODEL_KNOBS} {DEFAULT_STEPS})")
    split: str = cfg.flag("val", "split to tune on", note="test is refused")
    seed: int = cfg.flag(0, "seed of the images and values")
    batch_size: int = cfg.flag(48, "images per abduction")
    solver: Solver = cfg.flag("ddim", SOLVER_HELP)
    """The decoder of every cell: "ddim" or "dpm++2m" (``counterfactual.SOLVERS``)."""
    abduction: Abduction = cfg.flag(DEFAULT_ABDUCTION, ABDUCTION_HELP)

    def __post_init__(self) -> None:
        if not self.depths or not self.weights:
            raise ValueError("tune needs at least one depth and one guidance weight")
        bad = [d for d in self.depths if not 0 < d <= 1]
        if bad:
            raise ValueError(f"depths must lie in (0, 1], got {bad}")
        if any(not math.isfinite(w) for w in self.weights):
            raise ValueError(f"guidance weights must be finite, got {list(self.weights)}")
        if self.n < 1 or (self.steps is not None and self.steps < 1) or self.batch_size < 1:
            raise ValueError(f"n, steps and batch_size must be positive: {self.n}, {self.steps}, {self.batch_size}")
        check_decoding(self.abduction, self.solver)
        if self.split == "test":
            raise ValueError("tune chooses knobs, which must never see the test split: use --split val")


def tune(model: CausalDiffAE, dataset: ImageDataset, settings: TuneSettings | None = None,
         predictors: Predictors | None = None, progress: bool = True) -> dict:
    """Score every (depth, guidance) of the grid; returns {"settings", "criterion", "images", "grid": [rows],
    "lowest", "best"}: "best" is the one-standard-error choice (see ``write_tuning``); each row also holds its
    means per do() variable ("by_variable"). Steps of None are the model's own; "settings" records the steps
    used, which the chosen knobs belong to."""
    s = settings or TuneSettings()
    s = replace(s, steps=model.knobs.resolve_steps(s.steps))
    if s.split not in dataset.splits:
        raise ValueError(f"the dataset has no {s.split!r} split (it has {sorted(set(dataset.splits))})")
    data = dataset.with_variables(model.graph.variables).split(s.split)  # labels matched by name
    scm = true_scm(data)
    if scm is None and predictors is None:
        raise ValueError("tune needs a known SCM (the true counterfactual) or predictors (--predictors) to score")
    graph, names = model.graph, model.graph.variables
    queries = single_interventions(data, s.n, s.seed, s.split)  # the same interventions at every depth and weight
    truths = {name: scm.counterfactual(rows.tolist(), {name: values})[0] for name, rows, values in queries} \
        if scm is not None else {}
    scores: dict[tuple[float, float], dict[str, list[torch.Tensor]]] = {}
    by_variable: dict[tuple[float, float, str], dict[str, list[torch.Tensor]]] = {}  # the same, per do() variable
    bar = tqdm(total=len(s.depths) * s.n, unit="img", desc="tune", disable=not progress, dynamic_ncols=True)
    for depth in s.depths:
        for name, rows, values in queries:
            for start in range(0, len(rows), s.batch_size):
                index, value = rows[start: start + s.batch_size], values[start: start + s.batch_size]
                batch = data.batch(index)
                x = batch["image"]
                morpho = scm is not None and scm.kind == "morphomnist"  # thickness and intensity measured
                factual_measured = normalized(graph, morphometry_labels(x)) if morpho else None
                columns = [({name: value}, w) for w in s.weights] + [({}, w) for w in s.weights]
                result = sweep(model, x, columns, steps=s.steps, depth=depth, solver=s.solver, abduction=s.abduction,
                               classes=batch.get("class"), latents=model.encode(x, labels=batch["labels"].float()))
                images = result.images.float().cpu()
                for j, w in enumerate(s.weights):
                    entries = scores.setdefault((depth, w), {}), by_variable.setdefault((depth, w, name), {})

                    def add(key: str, values: torch.Tensor, entries: tuple = entries) -> None:
                        for entry in entries:
                            entry.setdefault(key, []).append(values)

                    cf, null = images[j], images[len(s.weights) + j]
                    add("null_l1", pixel_l1(null, x))
                    if scm is not None:
                        add("true_cf_l1", pixel_l1(cf, truths[name][start: start + s.batch_size]))
                    intended = normalized(graph, known_labels(graph, batch["labels"].float(), {name: value}))
                    var_index = graph.index(name)
                    if predictors is not None:
                        predicted = normalized(graph, predictors.predict(cf).float().cpu())
                        add("effectiveness", (predicted - intended)[:, var_index].abs())
                        if predictors.classifier is not None:
                            kept = predictors.predict_class(cf) == predictors.predict_class(x)
                            add("class_kept", kept.float().cpu())
                    if factual_measured is not None:
                        measured = normalized(graph, morphometry_labels(cf))
                        add("measured", (measured - intended)[:, var_index].abs())
                        # what the intervention executed: the measured change over the asked one (ratio of means)
                        before = factual_measured[:, var_index]
                        add("measured_change", (measured[:, var_index] - before).abs())
                        add("asked_change", (intended[:, var_index] - before).abs())
                bar.update(len(index))
    bar.close()
    criterion = "true_cf_l1" if scm is not None else "effectiveness"
    lowest, chosen, paired = one_se_choice({key: torch.cat(entry[criterion]) for key, entry in scores.items()})
    grid = []
    for (depth, w), entry in scores.items():
        row: dict = {"depth": depth, "guidance": w}
        for key, chunks in entry.items():
            row[key], row[f"{key}_sem"] = _mean_sem(torch.cat(chunks))
        if "asked_change" in row:  # the executed share: 1 = the whole asked change, measured on the image
            row["executed"] = row["measured_change"] / row["asked_change"] if row["asked_change"] else None
        row["paired_difference"], row["paired_sem"], row["within_one_sem"] = paired[depth, w]
        row["by_variable"] = {name: {key: _mean_sem(torch.cat(chunks))[0]
                                     for key, chunks in by_variable[depth, w, name].items()} for name in names}
        grid.append(row)
    return {"settings": asdict(s), "criterion": criterion, "images": s.n, "grid": grid,
            "lowest": {"depth": lowest[0], "guidance": lowest[1]},
            "best": {"depth": chosen[0], "guidance": chosen[1]}}


def single_interventions(data: ImageDataset, n: int, seed: int, split: str = "val"
                         ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """n random images of ``data`` (one split, labels in its graph's order), each with a do() on one variable
    (variables in turn) to a value drawn from the split's labels of it: [(variable, rows, values)]. What ``tune``
    and ``benchmarks/cf_uncertainty.py`` score, the same draws for the same seed."""
    names = data.graph.variables
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(data), generator=g)
    picks = picks.repeat(math.ceil(n / len(picks)))[:n]
    queries = []
    for i, name in enumerate(names):
        rows = picks[i:: len(names)]
        column = data.labels[:, data.graph.index(name)].float()
        column = column[~torch.isnan(column)]
        if not len(column):
            raise ValueError(f"variable {name!r} has no labels in the {split!r} split, so no do() value can be "
                             "drawn for it: label some of its images, or tune on another split (--split)")
        queries.append((name, rows, column[torch.randint(len(column), (len(rows),), generator=g)]))
    if n < len(names):  # the variables take the images in turn: the last ones would get none to score
        raise ValueError(f"tune: n = {n} images are fewer than the model's {len(names)} variables "
                         f"({', '.join(names)}), and each variable needs a do() on at least one image: ask for "
                         f"--n {len(names)} or more")
    return queries


def one_se_choice(per_image: dict[tuple[float, float], torch.Tensor]
                  ) -> tuple[tuple[float, float], tuple[float, float], dict[tuple[float, float], tuple]]:
    """The one-standard-error rule over (depth, guidance) cells scored on the same images (lower is better).

    Each cell is compared with the lowest one image by image (mean and standard error of the paired
    difference); among the cells within one standard error, guidance 1 is preferred (one UNet branch, half the
    cost of any other weight), then the lower mean. Returns (lowest, chosen, {cell: (difference, sem, within)})."""
    lowest = min(per_image, key=lambda key: per_image[key].mean().item())
    paired = {}
    for key, values in per_image.items():
        difference, sem = _mean_sem(values - per_image[lowest])
        paired[key] = (difference, sem, difference <= sem)
    chosen = min((key for key in per_image if paired[key][2]),
                 key=lambda key: (key[1] != 1.0, per_image[key].mean().item()))
    return lowest, chosen, paired


def _mean_sem(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    sem = (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else 0.0
    return values.mean().item(), sem


def write_tuning(result: dict, out: str | Path, run: str, data: str) -> Path:
    """tune.json and tune.md (the grid as a table, the chosen knobs and the command) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "tune.json", to_json({"run": run, "data": data, **result}))  # NaN/inf as null
    s = result["settings"]
    headers = {"true_cf_l1": "true-cf L1 (0-255)", "effectiveness": "effectiveness (norm. MAE, intervened var.)",
               "measured": "measured (norm. MAE, intervened var.)", "class_kept": "class kept",
               "null_l1": "null-intervention L1 (0-255)"}
    keys = [k for k in headers if k in result["grid"][0]]
    executed = "executed" in result["grid"][0]  # measured change over asked change: a ratio, no standard error
    rows = [[fmt(r["depth"]), fmt(r["guidance"])] + [f"{r[k]:.4g} ± {r[k + '_sem']:.2g}" for k in keys]
            + ([fmt(r["executed"])] if executed else [])
            + [f"{r['paired_difference']:+.3g} ± {r['paired_sem']:.2g}", "yes" if r["within_one_sem"] else "no"]
            for r in sorted(result["grid"], key=lambda r: (r["depth"], r["guidance"]))]
    best = result["best"]
    text = [f"# Tuning of `{run}` on the {s['split']} split\n",
            f"Data `{data}`; {result['images']} {s['split']} images, one do() each (variables in turn), seed "
            f"{s['seed']}, {s['steps']} DDIM steps; mean ± standard error over images. The test split is not "
            f"used.\n", table(["depth", "guidance", *(headers[k] for k in keys),
                                 *(["executed share (measured change / asked)"] if executed else []),
                                 "criterion − lowest (paired)", "within one SE"], rows),
            f"\nCriterion: {headers[result['criterion']]}. Lowest: depth {result['lowest']['depth']:g}, guidance "
            f"{result['lowest']['guidance']:g}. Every cell scores the same images under the same interventions, so "
            f"each is compared with the lowest image by image (mean ± standard error of the paired difference). "
            f"Among the cells within one standard error of the lowest, guidance 1 is preferred (one UNet branch, "
            f"half the cost of any other weight), then the lower mean: **chosen depth {best['depth']:g}, guidance "
            f"{best['guidance']:g}**.\n"]
    write_text(out / "tune.md", "\n".join(text))
    return out / "tune.md"


__all__ = ["TuneSettings", "one_se_choice", "single_interventions", "tune", "write_tuning"]

"""``causaldiffae reproduce DATASET``: train every compared model with fixed configs and seeds (or reuse finished
runs), evaluate each under the same harness, and write the comparison table (docs/method-notes.md, "Baselines").

Everything lands in one folder: ``predictors/``, one run folder per model with its ``eval/`` report, and
``results.md`` / ``results.json``. A finished run (its exported model at the step budget) and a finished
evaluation (its metrics.json with the same settings) are reused, so an interrupted reproduce picks up where it
stopped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

from .atomic import write_text
from .data import open_dataset
from .data.base import ImageDataset
from .evaluation import evaluate_run, portable
from .knobs import DEFAULT_ABDUCTION, Abduction, read_knobs
from .metrics.predictors import save_predictors, train_predictors
from .metrics.report import fmt, pyplot, save_figure, summarize, table, to_json
from .metrics.settings import Settings
from .training import checkpoint, load_run_config, train


@dataclass(frozen=True)
class Entry:
    """One compared model: a run config (relative to the configs folder) and how its counterfactuals abduct."""

    name: str
    config: str
    abduction: Abduction = DEFAULT_ABDUCTION
    reuse: str | None = None
    """Evaluate another entry's run instead of training one (an inference-time ablation)."""
    depth: float | None = None
    """Inversion depth of its counterfactuals; None = the evaluation settings' depth."""
    guidance: float | None = None
    """Guidance weight of its counterfactuals; None = the evaluation settings' weight."""
    sets: tuple[str, ...] = ()
    """--set overrides of its training on top of its config (e.g. a labelled fraction)."""
    label_fraction: float = 1.0
    """The share of training labels it sees (data.label_fraction): the weak-supervision curve's x."""


def _plan(dataset: str) -> list[Entry]:
    return [Entry("causaldiffae", f"{dataset}.yaml"),
            # never trained on the null condition: any weight but 1 would extrapolate with an untrained branch
            Entry("causaldiffae-no-dropout", f"baselines/{dataset}-no-dropout.yaml", guidance=1.0),
            Entry("diffae-aligned", f"baselines/{dataset}-diffae-aligned.yaml"),
            Entry("diffae-unaligned", f"baselines/{dataset}-diffae-unaligned.yaml"),
            Entry("label-ddim", f"baselines/{dataset}-label-ddim.yaml"),
            # the reference code's abduction: fresh noise at the top of the trajectory, x_T = q_sample(x0, tau_K)
            # at depth 1.0 (tau_K = 980 of T = 1000 with 50 DDIM steps, where decoding starts; the reference's
            # respaced T-1 is 999: sqrt(alpha_bar) 0.0077 vs 0.0064, both keep almost nothing of x0)
            Entry("causaldiffae-noise-abduction-depth1", f"{dataset}.yaml", abduction="noise", reuse="causaldiffae",
                  depth=1.0),
            # the same fresh noise at the evaluation's depth (default 0.7: tau_K = 686, sqrt(alpha_bar) 0.09), the
            # setting of our earlier noise-abduction row; beside causaldiffae (DDIM inversion, same depth) it isolates
            # the abduction, beside the depth-1 row the depth
            Entry("causaldiffae-noise-abduction", f"{dataset}.yaml", abduction="noise", reuse="causaldiffae")]


PLANS = {name: _plan(name) for name in ("pendulum", "morphomnist")}


def label_fraction_entries(dataset: str, fractions: Sequence[float]) -> list[Entry]:
    """CausalDiffAE trained with only a share f of the training labels (data.label_fraction = f), one entry per
    f < 1 (f = 1 is the causaldiffae entry itself): the weak-supervision curve."""
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"label fractions must lie in (0, 1], got {bad}")
    return [Entry(f"causaldiffae-labels-{f:g}", f"{dataset}.yaml", sets=(f"data.label_fraction={f}",),
                  label_fraction=f) for f in sorted(set(fractions), reverse=True) if f < 1]


def select(plan: Sequence[Entry], only: Sequence[str] | None) -> list[Entry]:
    """The entries named in ``only`` (all when None), with the entries whose runs they reuse."""
    if only is None:
        return list(plan)
    names = {e.name for e in plan}
    unknown = sorted(set(only) - names)
    if unknown:
        raise ValueError(f"--only names unknown entries {unknown}; entries are {sorted(names)}")
    wanted = set(only) | {e.reuse for e in plan if e.name in only and e.reuse}
    return [e for e in plan if e.name in wanted]


def reproduce(dataset: str, out: str | Path, steps: int, settings: Settings, configs: str | Path = "configs",
              use: Mapping[str, str] | None = None, predictors: str | Path | None = None, jobs: int = 1,
              progress: bool = True, train_seeds: Sequence[int] | None = None,
              data_root: str | Path | None = None, label_fractions: Sequence[float] = (),
              only: Sequence[str] | None = None) -> Path:
    """Run the whole comparison for ``dataset`` into ``out``; returns the path of results.md.

    ``steps`` is every trained model's budget (train.max_steps); ``use`` maps an entry name to an existing model
    folder to evaluate instead of training it (e.g. the shipped model); ``predictors`` reuses trained predictors;
    ``jobs`` > 1 runs the trainings, then the evaluations, as that many parallel processes (one GPU holds them).
    ``train_seeds`` trains every model once per seed (train.seed) into ``out/NAME/seed-S`` and reports the mean
    and spread over them; None, or only the config's own seed, trains once into ``out/NAME``. Entries that reuse
    another's run evaluate each of its seeds; a model from ``use`` is one run, evaluated once. ``data_root``
    replaces the configs' dataset by a folder of the same variables (e.g. all 70,000 MNIST digits written by
    ``causaldiffae data morphomnist --mnist``): every model trains on it and is evaluated on its test split.
    ``label_fractions`` adds CausalDiffAE trained on that share of the labels (``label_fraction_entries``) and the
    weak-supervision curve to the report; ``only`` keeps the named entries (``select``).
    """
    if dataset not in PLANS:
        raise ValueError(f"reproduce knows {', '.join(PLANS)}, not {dataset!r}")
    out, configs, use = Path(out), Path(configs), dict(use or {})
    plan = select(PLANS[dataset] + label_fraction_entries(dataset, label_fractions), only)
    unknown = sorted(set(use) - {e.name for e in plan})
    if unknown:
        raise ValueError(f"--use names unknown entries {unknown}; entries are {[e.name for e in plan]}")
    data_sets = [] if data_root is None else ["data.name=folder", f"data.root={Path(data_root).resolve()}"]
    base = load_run_config(_config_path(configs, plan[0].config), data_sets)
    data = open_dataset(base.data.name, base.data.root, base.data.image_size, base.data.resize, progress,
                        base.data.class_column, base.data.renderings)
    predictors = Path(predictors) if predictors else out / "predictors"
    if not (predictors / "predictors.json").is_file():  # with the models' class condition, class_kept is measured
        save_predictors(train_predictors(data, base.data.class_column, progress=progress), predictors)
    seeds = training_seeds(train_seeds, base.train.seed)
    runs = {e.name: plan_runs(e, out, seeds, use) for e in plan}
    trained = [e for e in plan if e.reuse is None and e.name not in use]
    evals = {e.name: entry_settings(e, settings) for e in plan}
    if jobs > 1:  # the same work as below, in parallel processes; the sequential pass then reuses all of it
        _parallel({f"train-{e.name}{_suffix(r.seed)}": _train_args(_config_path(configs, e.config), r, steps,
                                                                   [*e.sets, *data_sets])
                   for e in trained for r in runs[e.name] if not _finished(r.run, steps)}, out / "logs", jobs)
        _parallel({f"evaluate-{e.name}{_suffix(r.seed)}": ["evaluate", str(r.run), "--predictors", str(predictors),
                                                           "--out", str(r.eval), *evals[e.name].flags()]
                   + ([] if (r.run / "config.yaml").is_file() else ["--data", str(data.root)])
                   for e in plan for r in runs[e.name] if not _evaluated(r.run, r.eval, evals[e.name])},
                  out / "logs", jobs)
    rows = {}
    for entry in plan:
        for r in runs[entry.name]:
            if entry in trained:
                _train(_config_path(configs, entry.config), r.run, steps, progress, r.seed, [*entry.sets, *data_sets])
        rows[entry.name] = [_evaluate(r.run, data, predictors, r.eval, evals[entry.name], progress)
                            for r in runs[entry.name]]
    budget = (f"{steps} training steps of each config's batch size, training seeds "
              f"{[base.train.seed] if seeds == [None] else seeds}"
              + (f"; models from elsewhere (one run each): {dict(use)}" if use else ""))
    fractions = {e.name: e.label_fraction for e in plan if e.name == "causaldiffae" or e.label_fraction < 1}
    return write_comparison(dataset, rows, out, budget, fractions=fractions if len(fractions) > 1 else None)


class Run(NamedTuple):
    """One training seed of an entry: its training seed (None = the config's own), run folder and eval folder."""

    seed: int | None
    run: Path
    eval: Path


def entry_settings(entry: Entry, settings: Settings) -> Settings:
    """The evaluation settings of one entry: its abduction and, where it sets them, its depth and guidance."""
    return replace(settings, abduction=entry.abduction, depth=settings.depth if entry.depth is None else entry.depth,
                   guidance=settings.guidance if entry.guidance is None else entry.guidance)


def training_seeds(train_seeds: Sequence[int] | None, default: int) -> list[int | None]:
    """The training seeds to run; [None] = only the config's own seed, trained in today's layout ``OUT/NAME``."""
    if not train_seeds or list(train_seeds) == [default]:
        return [None]
    if len(set(train_seeds)) != len(train_seeds):
        raise ValueError(f"--train-seeds repeats a seed: {list(train_seeds)}")
    return list(train_seeds)


def plan_runs(entry: Entry, out: Path, seeds: Sequence[int | None], use: Mapping[str, str]) -> list[Run]:
    """An entry's runs, one per training seed: ``OUT/NAME`` (the config's seed) or ``OUT/NAME/seed-S``, its
    evaluation in ``eval/`` below the entry's own folder; a reused run is the other entry's, a model from ``use``
    is one run whatever the seeds."""
    source = entry.reuse or entry.name
    if source in use:
        return [Run(None, Path(use[source]), out / entry.name / "eval")]
    return [Run(s, _seed_folder(out / source, s), _seed_folder(out / entry.name, s) / "eval") for s in seeds]


def _seed_folder(folder: Path, seed: int | None) -> Path:
    return folder if seed is None else folder / f"seed-{seed}"


def _suffix(seed: int | None) -> str:
    return "" if seed is None else f"-seed-{seed}"


def _overrides(steps: int, seed: int | None, data_sets: Sequence[str] = ()) -> list[str]:
    """The --set overrides of a trained run: the step budget, unless it is the config's own the seed, and the
    dataset folder that replaces the config's."""
    return [f"train.max_steps={steps}", *([] if seed is None else [f"train.seed={seed}"]), *data_sets]


def _train_args(config_path: Path, run: Run, steps: int, data_sets: Sequence[str] = ()) -> list[str]:
    """The train command of one run (what ``_train`` does in this process)."""
    sets = [arg for item in _overrides(steps, run.seed, data_sets) for arg in ("--set", item)]
    return (["train", str(config_path), "--out", str(run.run), *sets]
            + (["--resume"] if checkpoint.latest(run.run) else []))


def _parallel(commands: dict[str, list[str]], logs: Path, jobs: int) -> None:
    """Run ``causaldiffae ARGS...`` processes, ``jobs`` at a time, each logging to ``logs/NAME.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(commands.items())
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    failed: list[str] = []
    while pending or running:
        while pending and len(running) < jobs:
            name, args = pending.pop(0)
            log = logs / f"{name}.log"
            with log.open("w") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "causaldiffae.cli", *args], stdout=fh, stderr=fh)
            running.append((proc, log))
        time.sleep(1)
        for proc, log in [r for r in running if r[0].poll() is not None]:
            running.remove((proc, log))
            if proc.returncode:
                failed.append(str(log))
    if failed:
        raise ValueError(f"{len(failed)} parallel job(s) failed; see {', '.join(failed)}")


def _config_path(configs: Path, name: str) -> Path:
    path = configs / name
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found: run from the repository root or pass --configs DIR")
    return path


def _finished(run: Path, steps: int) -> bool:
    previous = checkpoint.latest(run)
    return previous is not None and checkpoint.step_of(previous) >= steps and (run / "model.safetensors").is_file()


def _train(config_path: Path, run: Path, steps: int, progress: bool, seed: int | None = None,
           data_sets: Sequence[str] = ()) -> None:
    """Train to ``steps`` unless the run already got there; a partial run resumes from its checkpoint."""
    if not _finished(run, steps):
        config = load_run_config(config_path, _overrides(steps, seed, data_sets))
        train(config, run, resume=checkpoint.latest(run) is not None, progress=progress)


def _evaluated(run: Path, out: Path, settings: Settings) -> bool:
    """Whether ``out`` holds this run's evaluation with these settings."""
    done = out / "metrics.json"
    if not done.is_file():
        return False
    document = json.loads(done.read_text())
    wanted = asdict(settings.resolved(read_knobs(run)))  # a depth, weight or steps of None: the run's own knobs
    return document.get("settings") == json.loads(json.dumps(wanted)) and document.get("run") == portable(run)


def _evaluate(run: Path, data: ImageDataset, predictors: Path, out: Path, settings: Settings,
              progress: bool) -> dict:
    if not _evaluated(run, out, settings):
        evaluate_run(run, data, predictors, out, settings, progress=progress)
    return json.loads((out / "metrics.json").read_text())


class Column(NamedTuple):
    """One column of the comparison: its header, the path into one seed's metrics ("*" averages over the
    single-variable interventions) and which way is better: "lower", "higher", "floor" (a measurement floor
    beside the model's number, never a win) or "shown" (read beside another column, never a win: reversibility
    rewards weak interventions, so it stands beside the executed share)."""

    header: str
    path: tuple[str, ...]
    better: str = "lower"


COLUMNS = [
    Column("effectiveness (norm. MAE, intervened var.)", ("effectiveness", "*", "@")),
    Column("no-op floor (norm. MAE, intervened var.)", ("noop_floor", "*", "@"), "floor"),
    Column("oracle (norm. MAE, intervened var.)", ("oracle", "*", "@"), "floor"),
    Column("gap closed (intervened var.)", ("gap_closed", "*", "@"), "higher"),
    Column("effectiveness (norm. MAE, all vars)", ("effectiveness", "*", "**")),
    # MorphoMNIST: thickness and intensity measured on the images (morphometry), beside both floors
    Column("measured (norm. MAE, intervened var.)", ("truth", "*", "morphometry", "@")),
    Column("measured no-op floor", ("truth", "*", "morphometry_noop", "@"), "floor"),
    Column("measured oracle", ("truth", "*", "morphometry_oracle", "@"), "floor"),
    Column("class kept", ("class_kept", "*", "model"), "higher"),
    Column("oracle class kept", ("class_kept", "*", "oracle"), "floor"),
    Column("true-cf L1", ("truth", "*", "l1")),
    Column("decoder cycle L1 (1)", ("composition", "l1_1")),
    Column("decoder cycle L1 (10)", ("composition", "l1_10")),
    Column("idempotence L1", ("idempotence_l1",)),
    Column("reversibility L1", ("reversibility_l1",), "shown"),
    Column("executed share (intervened var.)", ("executed_share",), "shown"),
    Column("non-desc. change", ("minimality", "*", "non_descendant_change")),
    Column("oracle non-desc. change", ("minimality", "*", "oracle_non_descendant_change"), "floor"),
    Column("CLD", ("minimality", "*", "cld")),
    Column("oracle CLD", ("minimality", "*", "oracle_cld"), "floor"),
    Column("FID", ("realism", "fid")),
    Column("FID of the inputs", ("realism", "fid_factual"), "floor"),
    Column("KID", ("realism", "kid")),
]


def column_value(metrics: dict, path: tuple[str, ...]) -> float | None:
    """One comparison number from one seed's metrics: '*' averages over the single-variable interventions do(X);
    after it '@' stands for the intervened variable X (its entry's normalised MAE, or the number itself) and '**'
    for the mean over every variable's normalised MAE."""
    if "*" not in path:
        return _number(_get(metrics, path))
    star = path.index("*")
    node, rest = _get(metrics, path[:star]), path[star + 1:]
    if not isinstance(node, dict):
        return None
    values = []
    for key, sub in node.items():
        if not key.startswith("do("):
            continue
        if "@" in rest:
            entry = _get(sub, tuple(key[3:-1] if part == "@" else part for part in rest))
            values.append(_number(entry.get("mae_normalized") if isinstance(entry, dict) else entry))
        elif rest == ("**",):
            per = [_number(e.get("mae_normalized")) for e in sub.values()]
            known_per = [p for p in per if p is not None]
            values.append(sum(known_per) / len(known_per) if known_per and len(known_per) == len(per) else None)
        else:
            values.append(_number(_get(sub, rest)))
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def column_summary(document: dict, path: tuple[str, ...]) -> dict | None:
    """A column's mean and spread over an evaluation's seeds (None where the metric does not apply)."""
    values = [column_value(seed, path) for seed in document["seeds"]]
    return None if None in values else summarize(values)


def headline(document: dict) -> dict[str, float]:
    """An evaluation's headline numbers: the mean over seeds of each comparison column that applies to it, as
    ``evaluate/<column>`` (what ``evaluate --log-with`` hands the trackers)."""
    means = {c.header: column_summary(document, c.path) for c in COLUMNS}
    return {f"evaluate/{header}": s["mean"] for header, s in means.items() if s is not None}


def _get(node: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _number(entry: object) -> float | None:
    """A finite number, else None (a metric that did not apply, e.g. reversibility with --subset 0)."""
    if isinstance(entry, (int, float)) and not isinstance(entry, bool) and math.isfinite(entry):
        return float(entry)
    return None


def write_comparison(dataset: str, rows: Mapping[str, dict | Sequence[dict]], out: Path, budget: str,
                     reference: str = "causaldiffae", fractions: Mapping[str, float] | None = None) -> Path:
    """results.md (the table, the budget, where a model beats ``reference``) and results.json, from evaluation
    documents (metrics.json) by model name: one document or one per training seed. A row of one training seed
    shows the mean ± std over its evaluation seeds; a row of several, the mean ± std over the training seeds of
    each evaluation's mean (``training_summary``), and that spread is what the beats rule then uses. Columns no
    row has (the measured ones off MorphoMNIST) are left out. ``fractions`` (row name -> labelled share) adds
    the weak-supervision table and ``weak-supervision.png``."""
    docs = {name: [doc] if isinstance(doc, Mapping) else list(doc) for name, doc in rows.items()}
    values = {name: {c.header: training_summary(d, c.path) for c in COLUMNS} for name, d in docs.items()}
    dci = {name: _dci_summary(d) for name, d in docs.items()}
    counts = {name: len(d) for name, d in docs.items()}
    shown = [c for c in COLUMNS if any(v[c.header] is not None for v in values.values())]
    headers = [c.header for c in shown]
    lines = [[name, str(counts[name])] + [fmt(v[h]) for h in headers]
             + [fmt(dci[name].get("disentanglement")), fmt(dci[name].get("completeness"))]
             for name, v in values.items()]
    ours = values.get(reference, {})
    beaten = [f"{name} beats {reference} on {h}: {fmt(v[h])} vs {fmt(ours[h])}" for name, v in values.items()
              if name != reference for c in shown for h in [c.header] if _beats(v[h], ours.get(h), c.better)]
    first = next(iter(docs.values()))[0]
    s = first["settings"]
    text = [f"# Comparison on {dataset}\n",
            f"Test split, {s['n']} interventions per evaluation seed, evaluation seeds {s['seeds']}, {s['steps']} "
            f"DDIM steps, abduction {s.get('abduction', 'ddim')}, depth {s['depth']}, guidance {s['guidance']}"
            f"{_other_settings(docs, s)}. A row of one training seed shows the mean ± std over the evaluation "
            f"seeds; a row of several (column \"training seeds\") the mean ± std over its training seeds of each "
            f"run's mean over the evaluation seeds. Lower is better in every column but gap closed and DCI; the "
            f"oracle columns and \"FID of the inputs\" are measurement floors (the true counterfactuals, the factual "
            f"inputs), not scores. Budget: {budget}.\n",
            table(["model", "training seeds", *headers, "DCI D", "DCI C"], lines),
            f"\n## Where a model beats {reference}\n",
            "Better by more than 1 % and by more than the two spreads together (over training seeds where a row "
            "has several).\n",
            "\n".join(f"- {b}" for b in beaten) if beaten else "Nowhere in these columns.",
            "\n## Predictors (held-out MAE, normalised)\n",
            ", ".join(f"{k}: {e['mae_normalized']:.4g}" for k, e in first["predictors"].items()
                      if isinstance(e, dict) and e.get("mae_normalized") is not None) + "\n"]
    if fractions:
        text += weak_supervision(values, fractions, out)
    write_text(out / "results.json", to_json({"dataset": dataset, "budget": budget, "training_seeds": counts,
                                              "values": values, "dci": dci, "beaten": beaten,
                                              "label_fractions": dict(fractions or {})}))  # NaN/inf as null
    write_text(out / "results.md", "\n".join(text))
    return out / "results.md"


#: The weak-supervision curve's y axes: effectiveness (measured where the images are measured) and the truth.
CURVE = ["effectiveness (norm. MAE, intervened var.)", "measured (norm. MAE, intervened var.)",
         "gap closed (intervened var.)", "true-cf L1"]


def weak_supervision(values: Mapping[str, Mapping[str, dict | None]], fractions: Mapping[str, float],
                     out: Path) -> list[str]:
    """The weak-supervision section of results.md (a table by labelled share) and ``out/weak-supervision.png``:
    each curve column against the share of training labels, with its spread as error bars."""
    names = sorted((n for n in fractions if n in values), key=lambda n: -fractions[n])
    curves = [h for h in CURVE if any(values[n].get(h) is not None for n in names)]
    head = ["\n## Weak supervision\n",
            "CausalDiffAE trained with only a share of the training labels (data.label_fraction; the others hidden "
            "from the label term, the same images and budget).\n"]
    if not curves:
        return [*head, "None of the curve's metrics applies to these evaluations.\n"]
    fig, axes = pyplot().subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, header in zip(axes[0], curves, strict=True):
        points = [(fractions[n], v) for n in names if (v := values[n].get(header)) is not None]
        ax.errorbar([f for f, _ in points], [v["mean"] for _, v in points], yerr=[v["std"] for _, v in points],
                    marker="o", capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("share of training labels")
        ax.set_title(header, fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "weak-supervision.png")
    lines = [[f"{fractions[n]:g}", n, *(fmt(values[n].get(h)) for h in curves)] for n in names]
    return [*head, table(["labelled share", "model", *curves], lines), "\n![weak supervision](weak-supervision.png)\n"]


def training_summary(documents: Sequence[dict], path: tuple[str, ...]) -> dict | None:
    """One row's column: with one training seed its evaluation's mean and spread over evaluation seeds; with
    several, the mean and spread over the training seeds of each evaluation's mean (None where it does not apply)."""
    runs = [column_summary(doc, path) for doc in documents]
    known = [r for r in runs if r is not None]
    if len(known) < len(runs):
        return None
    return known[0] if len(known) == 1 else summarize([r["mean"] for r in known])


def _dci_summary(documents: Sequence[dict]) -> dict:
    """DCI of one row, over training seeds as ``training_summary`` (empty for a model without an encoder)."""
    runs = [doc["summary"].get("dci") or {} for doc in documents]
    if len(runs) == 1:
        return runs[0]
    keys = [k for k in ("disentanglement", "completeness") if all(isinstance(r.get(k), dict) for r in runs)]
    return {k: summarize([r[k]["mean"] for r in runs]) for k in keys}


def _other_settings(docs: Mapping[str, list[dict]], first: dict) -> str:
    """'; rows with other settings: NAME (abduction noise, depth 1.0)' for the rows evaluated otherwise (each
    model at its own knobs: depth, guidance and steps can differ between rows)."""
    keys = ("abduction", "depth", "guidance", "steps")
    notes = []
    for name, runs in docs.items():
        own = runs[0]["settings"]
        changed = [f"{k} {own.get(k)}" for k in keys if own.get(k) != first.get(k)]
        if changed:
            notes.append(f"{name} ({', '.join(changed)})")
    return f"; rows with other settings: {', '.join(notes)}" if notes else ""


def _beats(theirs: dict | None, ours: dict | None, better: str = "lower") -> bool:
    """Better (lower, or higher for a "higher" column; never for a floor or a shown column) by more than 1 % and by
    more than both
    spreads together: each row's spread over its training seeds where it has several (``training_summary``),
    else over its evaluation seeds."""
    if theirs is None or ours is None or better in ("floor", "shown"):
        return False
    gap = (ours["mean"] - theirs["mean"]) * (-1 if better == "higher" else 1)
    return gap > 0.01 * abs(ours["mean"]) and gap > theirs["std"] + ours["std"]

"""``causaldiffae reproduce DATASET``: train every compared model with fixed configs and seeds (or reuse finished
runs), evaluate each under the same harness, and write the comparison table (method.md section 5).

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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import write_text
from .data import open_dataset
from .data.base import ImageDataset
from .evaluation import evaluate_run
from .metrics.predictors import save_predictors, train_predictors
from .metrics.report import fmt, table
from .metrics.suite import Settings, summarize
from .training import checkpoint, load_run_config, train


@dataclass(frozen=True)
class Entry:
    """One compared model: a run config (relative to the configs folder) and how its counterfactuals abduct."""

    name: str
    config: str
    abduction: str = "ddim"
    reuse: str | None = None
    """Evaluate another entry's run instead of training one (an inference-time ablation)."""


def _plan(dataset: str) -> list[Entry]:
    return [Entry("causaldiffae", f"{dataset}.yaml"),
            Entry("causaldiffae-no-dropout", f"baselines/{dataset}-no-dropout.yaml"),
            Entry("diffae-aligned", f"baselines/{dataset}-diffae-aligned.yaml"),
            Entry("diffae-unaligned", f"baselines/{dataset}-diffae-unaligned.yaml"),
            Entry("label-ddim", f"baselines/{dataset}-label-ddim.yaml"),
            Entry("causaldiffae-noise-abduction", f"{dataset}.yaml", abduction="noise", reuse="causaldiffae")]


PLANS = {name: _plan(name) for name in ("pendulum", "morphomnist")}


def reproduce(dataset: str, out: str | Path, steps: int, settings: Settings, configs: str | Path = "configs",
              use: Mapping[str, str] | None = None, predictors: str | Path | None = None, jobs: int = 1,
              progress: bool = True) -> Path:
    """Run the whole comparison for ``dataset`` into ``out``; returns the path of results.md.

    ``steps`` is every trained model's budget (train.max_steps); ``use`` maps an entry name to an existing model
    folder to evaluate instead of training it (e.g. the shipped model); ``predictors`` reuses trained predictors;
    ``jobs`` > 1 runs the trainings, then the evaluations, as that many parallel processes (one GPU holds them).
    """
    if dataset not in PLANS:
        raise ValueError(f"reproduce knows {', '.join(PLANS)}, not {dataset!r}")
    out, configs, use = Path(out), Path(configs), dict(use or {})
    plan = PLANS[dataset]
    unknown = sorted(set(use) - {e.name for e in plan})
    if unknown:
        raise ValueError(f"--use names unknown entries {unknown}; entries are {[e.name for e in plan]}")
    base = load_run_config(_config_path(configs, plan[0].config))
    data = open_dataset(base.data.name, base.data.root, base.data.image_size, base.data.resize, progress,
                        base.data.class_column)
    predictors = Path(predictors) if predictors else out / "predictors"
    if not (predictors / "predictors.json").is_file():
        save_predictors(train_predictors(data, progress=progress), predictors)
    runs = {e.name: Path(use.get(e.reuse or e.name) or out / (e.reuse or e.name)) for e in plan}
    trained = [e for e in plan if e.reuse is None and e.name not in use]
    evals = {e.name: (out / e.name / "eval", Settings(**{**asdict(settings), "abduction": e.abduction}))
             for e in plan}
    if jobs > 1:  # the same work as below, in parallel processes; the sequential pass then reuses all of it
        _parallel({f"train-{e.name}": ["train", str(_config_path(configs, e.config)), "--out", str(runs[e.name]),
                                       "--set", f"train.max_steps={steps}"]
                   + (["--resume"] if checkpoint.latest(runs[e.name]) else [])
                   for e in trained if not _finished(runs[e.name], steps)}, out / "logs", jobs)
        _parallel({f"evaluate-{e.name}": ["evaluate", str(runs[e.name]), "--predictors", str(predictors), "--out",
                                          str(evals[e.name][0]), *_flags(evals[e.name][1])]
                   + ([] if (runs[e.name] / "config.yaml").is_file() else ["--data", str(data.root)])
                   for e in plan if not _evaluated(runs[e.name], *evals[e.name])}, out / "logs", jobs)
    rows = {}
    for entry in plan:
        if entry in trained:
            _train(_config_path(configs, entry.config), runs[entry.name], steps, progress)
        rows[entry.name] = _evaluate(runs[entry.name], data, predictors, *evals[entry.name], progress)
    budget = f"{steps} training steps of each config's batch size" + (f"; models from elsewhere: {dict(use)}"
                                                                        if use else "")
    return write_comparison(dataset, rows, out, budget)


def _flags(settings: Settings) -> list[str]:
    """Settings -> the evaluate command's flags."""
    return ["--n", str(settings.n), "--seeds", ",".join(map(str, settings.seeds)), "--steps", str(settings.steps),
            "--guidance", str(settings.guidance), "--depth", str(settings.depth), "--abduction", settings.abduction,
            "--batch-size", str(settings.batch_size), "--subset", str(settings.subset)]


def _parallel(commands: dict[str, list[str]], logs: Path, jobs: int) -> None:
    """Run ``causaldiffae ARGS...`` processes, ``jobs`` at a time, each logging to ``logs/NAME.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(commands.items()), [], []
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


def _train(config_path: Path, run: Path, steps: int, progress: bool) -> None:
    """Train to ``steps`` unless the run already got there; a partial run resumes from its checkpoint."""
    if not _finished(run, steps):
        config = load_run_config(config_path, [f"train.max_steps={steps}"])
        train(config, run, resume=checkpoint.latest(run) is not None, progress=progress)


def _evaluated(run: Path, out: Path, settings: Settings) -> bool:
    """Whether ``out`` holds this run's evaluation with these settings."""
    done = out / "metrics.json"
    if not done.is_file():
        return False
    document = json.loads(done.read_text())
    return document.get("settings") == json.loads(json.dumps(asdict(settings))) and document.get("run") == str(run)


def _evaluate(run: Path, data: ImageDataset, predictors: Path, out: Path, settings: Settings,
              progress: bool) -> dict:
    if not _evaluated(run, out, settings):
        evaluate_run(run, data, predictors, out, settings, progress=progress)
    return json.loads((out / "metrics.json").read_text())


#: The comparison's columns: (header, path into one seed's metrics); lower is better in each. "*" averages over
#: the single-variable interventions.
COLUMNS = [
    ("effectiveness (norm. MAE, intervened var.)", ("effectiveness", "*", "@")),
    ("effectiveness (norm. MAE, all vars)", ("effectiveness", "*", "**")),
    ("true-cf L1", ("truth", "*", "l1")),
    ("composition L1 (1)", ("composition", "l1_1")),
    ("composition L1 (10)", ("composition", "l1_10")),
    ("reversibility L1", ("reversibility_l1",)),
    ("non-desc. change", ("minimality", "*", "non_descendant_change")),
    ("CLD", ("minimality", "*", "cld")),
    ("FID", ("realism", "fid")),
    ("KID", ("realism", "kid")),
]


def column_value(metrics: dict, path: tuple[str, ...]) -> float | None:
    """One comparison number from one seed's metrics: '*' averages over the single-variable interventions do(X);
    after it '@' takes the intervened variable's normalised MAE and '**' the mean over every variable's."""
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
        if rest == ("@",):
            values.append(_number(_get(sub, (key[3:-1], "mae_normalized"))))
        elif rest == ("**",):
            per = [_number(e.get("mae_normalized")) for e in sub.values()]
            values.append(sum(per) / len(per) if per and None not in per else None)  # type: ignore[arg-type]
        else:
            values.append(_number(_get(sub, rest)))
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def column_summary(document: dict, path: tuple[str, ...]) -> dict | None:
    """A column's mean and spread over an evaluation's seeds (None where the metric does not apply)."""
    values = [column_value(seed, path) for seed in document["seeds"]]
    return None if None in values else summarize(values)  # type: ignore[arg-type]


def _get(node: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _number(entry: object) -> float | None:
    """A finite number, else None (a metric that did not apply, e.g. reversibility with --subset 0)."""
    ok = isinstance(entry, (int, float)) and not isinstance(entry, bool) and math.isfinite(entry)
    return float(entry) if ok else None


def write_comparison(dataset: str, rows: Mapping[str, dict], out: Path, budget: str,
                     reference: str = "causaldiffae") -> Path:
    """results.md (the table with mean ± std over seeds, the budget, where a model beats ``reference``) and
    results.json, from evaluation documents (metrics.json) by model name."""
    values = {name: {header: column_summary(doc, path) for header, path in COLUMNS} for name, doc in rows.items()}
    dci = {name: doc["summary"].get("dci", {}) for name, doc in rows.items()}
    headers = [h for h, _ in COLUMNS]
    lines = [[name] + [fmt(v[h]) for h in headers]
             + [fmt(dci[name].get("disentanglement")), fmt(dci[name].get("completeness"))]
             for name, v in values.items()]
    ours = values.get(reference, {})
    beaten = [f"{name} beats {reference} on {h}: {fmt(v[h])} vs {fmt(ours[h])}" for name, v in values.items()
              if name != reference for h in headers if _beats(v[h], ours.get(h))]
    first = next(iter(rows.values()))
    s = first["settings"]
    text = [f"# Comparison on {dataset}\n",
            f"Test split, {s['n']} interventions per seed, seeds {s['seeds']}, {s['steps']} DDIM steps, depth "
            f"{s['depth']}, guidance {s['guidance']}; mean ± std over seeds. Lower is better in every column but "
            f"DCI. Budget: {budget}.\n",
            table(["model", *headers, "DCI D", "DCI C"], lines),
            f"\n## Where a model beats {reference}\n",
            "Lower by more than 1 % and by more than the two spreads together.\n",
            "\n".join(f"- {b}" for b in beaten) if beaten else "Nowhere in these columns.",
            "\n## Predictors (held-out MAE, normalised)\n",
            ", ".join(f"{k}: {e['mae_normalized']:.4g}" for k, e in first["predictors"].items()
                      if isinstance(e, dict) and e.get("mae_normalized") is not None) + "\n"]
    write_text(out / "results.json", json.dumps({"dataset": dataset, "budget": budget, "values": values,
                                                 "dci": dci, "beaten": beaten}, indent=1) + "\n")
    write_text(out / "results.md", "\n".join(text))
    return out / "results.md"


def _beats(theirs: dict | None, ours: dict | None) -> bool:
    if theirs is None or ours is None:
        return False
    gap = ours["mean"] - theirs["mean"]
    return gap > 0.01 * abs(ours["mean"]) and gap > theirs["std"] + ours["std"]

"""An evaluation's outputs: ``metrics.json`` (every number, mean and spread over seeds: ``summarize``),
``report.md`` (the tables) and ``guidance-sweep.png``; written atomically into one folder.

The other modules of ``metrics/`` (and the commands' reports) import this one and it imports none of them: it
formats what they computed, so no import circle runs through it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text


def metrics_document(results: dict, meta: dict) -> dict:
    """results of ``suite.evaluate`` + run facts -> the metrics.json payload (with the summary over seeds)."""
    return {**meta, **{k: v for k, v in results.items() if k != "seeds"}, "summary": summarize(results["seeds"]),
            "seeds": results["seeds"]}


def summarize(per_seed: Sequence[Any]) -> Any:
    """Mean and spread (std over seeds) of every number, keeping the nesting; lists element-wise.

    One value per seed, all of one kind (dicts, numbers, lists of numbers, bools), None where a metric did not
    apply: what comes back depends on that kind, hence ``Any``."""
    import torch  # here: the writers of other reports (graph check, tune tables) need no torch

    numbers = [v for v in per_seed if v is not None]  # None: a metric that did not apply (null in metrics.json)
    first = numbers[0] if numbers else None
    if isinstance(first, dict):
        return {k: summarize([s[k] for s in numbers]) for k in first if all(k in s for s in numbers)}
    if isinstance(first, bool):
        return first
    if isinstance(first, (int, float)):
        values = torch.tensor([math.nan if v is None else float(v) for v in per_seed], dtype=torch.float64)
        std = values.std(unbiased=False).item() if len(values) > 1 else 0.0
        return {"mean": values.mean().item(), "std": std, "values": values.tolist()}
    if isinstance(first, list):
        matrix = torch.tensor(per_seed, dtype=torch.float64)
        return {"mean": matrix.mean(dim=0).tolist(), "std": matrix.std(dim=0, unbiased=False).tolist()}
    return first


def interventional_lines(errors: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """``interventional_errors`` as one readable line per intervened variable."""
    return [f"do({name}): {name} error {row['error'][name]:.4f}"
            + "".join(f", {v} moved {m:.4f}" for v, m in row["moved"].items()) for name, row in errors.items()]


def write_report(document: dict, out: str | Path) -> Path:
    """Write metrics.json, report.md and guidance-sweep.png into ``out``; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "metrics.json", to_json(document))
    summary = document["summary"]
    if "guidance_sweep" in summary:
        _plot_sweep(summary["guidance_sweep"], out / "guidance-sweep.png", document.get("run", ""))
    write_text(out / "report.md", markdown(document))
    return out / "report.md"


def to_json(document: Any, indent: int | None = 1) -> str:
    """JSON text of a results document, NaN and inf written as null: bare NaN is not JSON, and a metric without
    data (e.g. reversibility with ``subset=0``) is NaN in the results."""
    return json.dumps(_finite(document), indent=indent, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def fmt(entry: Any, digits: int = 4) -> str:
    """{"mean", "std"} -> 'mean ± std' (std only when several seeds); numbers as is; missing -> 'n/a'; a mean
    of NaN or null (a metric with nothing to measure, e.g. the non-descendants of a variable that has none) -> '–'."""
    if isinstance(entry, dict) and "mean" in entry:
        mean, std, n = entry["mean"], entry["std"], len(entry.get("values", [0, 0]))
        if mean is None or not math.isfinite(mean):
            return "–"
        return f"{mean:.{digits}g} ± {std:.2g}" if n > 1 else f"{mean:.{digits}g}"
    if isinstance(entry, float):
        return f"{entry:.{digits}g}"
    return "n/a" if entry is None else str(entry)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def markdown(doc: dict) -> str:
    """The human-readable report of one evaluation."""
    s, summary = doc["settings"], doc["summary"]
    variables = doc["variables"]
    parts = [f"# Evaluation of `{doc.get('run', '?')}`\n",
             f"Data `{doc.get('data', '?')}`, test split; {s['n']} interventions per seed, seeds {s['seeds']}; "
             f"{s['steps']} steps ({s.get('solver', 'ddim')} decoding), depth {s['depth']}, guidance {s['guidance']}, "
             f"abduction {s['abduction']}. "
             f"Values are mean ± std over seeds. Pixel errors on the 0-255 scale. "
             f"Wall time {doc.get('seconds', 0):.0f} s on {doc.get('device', '?')}.\n",
             "## Anti-causal predictors (held-out test error)\n",
             table(["variable", "MAE", "MAE (normalised)"],
                   [[v, f"accuracy {fmt(e['accuracy'])}", "–"] if "accuracy" in e else
                    [v, fmt(e.get("mae")), fmt(e.get("mae_normalized"))] for v, e in doc["predictors"].items()
                    if isinstance(e, dict)])]
    checked = doc.get("predictors_interventional") or {}
    if checked:
        parts += ["On true counterfactuals of the test split under do() on each variable alone (normalised MAE of "
                  "the intervened variable to its value; how far each other non-descendant's reading moved):\n",
                  "\n".join(f"- {line}" for line in interventional_lines(checked)) + "\n"]
    eff, floor, oracle = summary["effectiveness"], summary["noop_floor"], summary.get("oracle", {})
    rows = []
    for key, per in eff.items():
        rows.append([key] + [fmt(per[v]["mae_normalized"]) if v in per else "–" for v in variables])
        for label, floors in (("no-op floor", floor), ("oracle", oracle)):
            if key in floors:
                rows.append([f"{key}: {label}"] + [fmt(floors[key][v]["mae_normalized"]) if v in floors[key] else "–"
                                                   for v in variables])
    parts += ["## Effectiveness (normalised MAE of the predicted attribute to its intended value)\n",
              "The no-op floor scores the factual image as the counterfactual; the oracle scores the true "
              "counterfactual (where the SCM is known), i.e. the instrument's own error. `–`: the intended value "
              "is unknown (a descendant without a known SCM).\n", table(["intervention", *variables], rows)]
    if summary.get("gap_closed"):
        parts += ["### Gap closed: (no-op − model) / (no-op − oracle)\n",
                  "1 = as good as the true counterfactual, 0 = no better than returning the input; for the "
                  "variables the intervention changes.\n",
                  table(["intervention", *variables], [[key] + [fmt(per.get(v)) if v in per else "–" for v in variables]
                                                      for key, per in summary["gap_closed"].items()])]
    parts += ["### Effectiveness in raw units\n",
              table(["intervention", *variables], [[key] + [fmt(per[v]["mae"]) if v in per else "–" for v in variables]
                                                   for key, per in eff.items()])]
    if summary.get("class_kept"):
        parts += ["## The class kept\n",
                  "Share of counterfactuals that the predictors' classifier reads as the same class (the digit) as "
                  "the factual image; the oracle: the same share for the true counterfactuals.\n",
                  table(["intervention", "counterfactuals", "oracle"],
                        [[key, fmt(k["model"]), fmt(k.get("oracle"))] for key, k in summary["class_kept"].items()])]
    if "truth" in summary:
        truth = summary["truth"]
        parts += ["## Error to the true counterfactual (rendered by the known SCM)\n",
                  table(["intervention", "L1", "MSE", "factual L1", "factual MSE", "closer than factual"],
                        [[k, fmt(t["l1"]), fmt(t["mse"]), fmt(t.get("factual_l1")), fmt(t.get("factual_mse")),
                          fmt(t.get("closer_than_factual"))] for k, t in truth.items()])]
        morpho_rows = []
        for key, t in truth.items():
            for suffix, label in (("", key), ("_noop", f"{key}: no-op floor"), ("_oracle", f"{key}: oracle")):
                m = t.get(f"morphometry{suffix}")
                if m is not None:
                    morpho_rows.append([label] + [fmt(m[v]["mae"]) if v in m else "–" for v in variables])
        if morpho_rows:
            parts += ["### Morphometry of the counterfactuals (MAE to the intended value, raw units)\n",
                      "Thickness and intensity measured on the images; the no-op floor measures the factual "
                      "image, the oracle the true counterfactual.\n",
                      table(["intervention", *variables], morpho_rows)]
    comp = summary.get("composition", {})
    parts += ["## The decoder's cycle, idempotence and reversibility (L1, 0-255)\n",
              f"On the first {s['subset']} images of each seed. The cycle re-abducts and decodes the image "
              f"with do() = {{}} ({comp.get('abduction', s.get('abduction'))} inversion: the exact abduction would "
              "return any image by construction, even through a decoder that ignores its latents). Idempotence: "
              "the same do() applied again to the counterfactual (0 = nothing more changes). Reversibility: "
              "undoing the do() on the counterfactual, to the factual image; it rewards weak interventions, so it "
              "stands beside the share of the asked change that the counterfactuals made (the intervened "
              "variable's predicted change over its intended change, mean over the single interventions).\n",
              table(["cycle, 1", f"cycle, {s['cycles']}", "idempotence", "reversibility", "executed share"],
                    [[fmt(comp.get("l1_1")), fmt(comp.get(f"l1_{s['cycles']}")),
                      fmt(summary.get("idempotence_l1")), fmt(summary["reversibility_l1"]),
                      fmt(summary.get("executed_share"))]])]
    parts += ["## Minimality\n", "Change of the non-descendants' predictions (normalised) and CLD (Melistas et al. "
              "2024; lower is better) on the predictors' features, each beside the oracle's (the true "
              "counterfactual's); `–`: the intervened variables have no non-descendants.\n",
              table(["intervention", "non-descendant change", "oracle", "CLD", "oracle CLD", "p1", "p2"],
                    [[k, fmt(m["non_descendant_change"]), fmt(m.get("oracle_non_descendant_change")), fmt(m["cld"]),
                      fmt(m.get("oracle_cld")), fmt(m["cld_p1"]), fmt(m["cld_p2"])]
                     for k, m in summary["minimality"].items()])]
    r = summary["realism"]
    parts += ["## Realism (on the predictors' features)\n",
              f"Reference: the {r.get('reference', '?')} ({fmt(r.get('reference_images'))} images), which shares no "
              f"image with the counterfactuals' inputs (the test split). Colour cast: the largest difference of a "
              f"channel's mean pixel value (0-255) from the reference's.\n",
              table(["", "images", "FID", "KID", "colour cast"],
                    [["counterfactuals", fmt(r.get("images")), fmt(r["fid"]), fmt(r["kid"]), fmt(r.get("colour_cast"))],
                     ["factual test images (their inputs)", fmt(r.get("images_factual")), fmt(r["fid_factual"]),
                      fmt(r["kid_factual"]), fmt(r.get("colour_cast_factual"))]])]
    if "dci" in summary:
        rows = []
        for field, d in (("z", summary["dci"]), ("u", summary.get("dci_u"))):
            if d:
                rows += [[f"{field}, per latent dimension", fmt(d["disentanglement"]), fmt(d["completeness"]),
                          fmt(d["informativeness"])],
                         [f"{field}, per variable block", fmt(d.get("block_disentanglement")),
                          fmt(d.get("block_completeness")), ""]]
        parts += ["## Disentanglement (DCI, gradient-boosted trees)\n",
                  "On z it is about 1 by construction: the label term makes each block a copy of its label, and "
                  "copies of the labels themselves score the same. On u (the encoder's noise, before the "
                  "mechanisms) it says how much of each label the noise carries. Neither ranks a model.\n",
                  table(["latents", "disentanglement", "completeness", "informativeness"], rows)]
    else:
        parts += ["## Disentanglement\n", "n/a: this model has no encoder.\n"]
    dag_rows = []
    for key, per in summary["dag_consistency"].items():
        for v, e in per.items():
            dag_rows.append([key, v, "yes" if e["allowed"] else "no", fmt(e["moved"]), fmt(e.get("oracle_moved")),
                             fmt(e["true_change"])])
    parts += ["## DAG consistency\n", "How much each variable's prediction moved (normalised units) under each "
              "intervention, whether the graph lets it move, how much it moved on the true counterfactual (oracle), "
              "and how much the label truly changes.\n",
              table(["intervention", "variable", "may move", "moved", "oracle moved", "true change"], dag_rows)]
    if "guidance_sweep" in summary:
        parts += ["## Guidance sweep\n", "![guidance sweep](guidance-sweep.png)\n",
                  "The null-intervention L1 at each weight: with the exact abduction 0 by construction at w = 1 only "
                  "(its residuals are those of the w = 1 decoding), so it is no score at w = 1.\n",
                  table(["w", "effectiveness (normalised MAE, intervened variable)", "null-intervention L1"],
                        [[k, fmt(e["effectiveness"]), fmt(e["null_l1"])]
                         for k, e in summary["guidance_sweep"].items()])]
    if doc.get("mechanisms"):
        parts.append(mechanisms_markdown(doc["mechanisms"]))
    return "\n".join(parts)


def mechanisms_markdown(check: dict[str, Any]) -> str:
    """A ``metrics.mechanisms.check_mechanisms`` result as a report section (of ``causaldiffae mechanisms`` and of
    an evaluation's report.md)."""
    parts = [f"## Mechanisms (family: {check['family']})\n",
             f"Fit on the {check['fit_split']} labels: R^2 of the mechanism's median against the child, residual "
             "spread in the child's units, NLL in normalised units; rows = labelled training rows the fit used.\n"]
    rows = [[m["child"], ", ".join(m["parents"]), f"{m['rows']:,}" if m["fitted"] else "not fitted",
             f"{m['val_rows']:,}", f"{m['r2']:.4f}", f"{m['spread']:.4g}", f"{m['nll']:.3f}",
             "yes" if m["deterministic"] else "no"] for m in check["mechanisms"]]
    none = ("No label mechanisms: do() moves children through the causal layer's MLP with the factual u (a model "
            "saved before them; `causaldiffae mechanisms RUN --fit` adds them).\n" if check["family"] == "none"
            else "No variable has parents in the model's latent graph.\n")
    parts.append(table(["child", "parents", "rows", "val rows", "R^2", "spread", "NLL", "determined by its parents"],
                       rows) if rows else none)
    parts += [f"- {m['child']}: R^2 {m['r2']:.4f} from {', '.join(m['parents'])}: a deterministic function of its "
              "parents in these labels, so do() on it alone asks for images no training image shows."
              for m in check["mechanisms"] if m["deterministic"]]
    cf = check["counterfactual"]
    if cf:
        parts.append(f"\n### Counterfactual error of each child against the true {cf['scm']} SCM (label units, MAE, "
                     f"{check['cf_split']} split)\n")
        parts.append("labels: the mechanisms on the true factual labels; latents: the model's counterfactual latents "
                     "(no diffusion), the noise abducted from its reading of the image, or from the known factual "
                     "labels (`labels=`, `evaluate --known-labels`); each error also as its share of the no-op floor; "
                     "reading: the model's error on the factual child.\n")

        def cell(p: dict, key: str) -> str:
            return f"{p[key]:.4g} ({p[key] / p['no_op']:.3f})" if key in p else "–"

        rows = [[f"do({p['do']}) -> {p['child']}", f"{p['rows']}", f"{p['no_op']:.4g}", cell(p, "labels"),
                 cell(p, "latents"), cell(p, "latents_known"), f"{p['reading']:.4g}" if "reading" in p else "–"]
                for p in cf["pairs"]]
        parts.append(table(["pair", "rows", "no-op floor", "labels", "latents (reading)", "latents (known labels)",
                            "reading"], rows))
    return "\n".join(parts)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported only when plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write a figure as a PNG atomically and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)


def _plot_sweep(sweep: dict, path: Path, title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(5, 4))
    xs = [e["null_l1"]["mean"] for e in sweep.values()]
    ys = [e["effectiveness"]["mean"] for e in sweep.values()]
    ax.plot(xs, ys, "o-")
    for label, x, y in zip(sweep, xs, ys, strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("null-intervention L1 at w (0-255; 0 at w = 1 by construction with the exact abduction)",
                  fontsize=8)
    ax.set_ylabel("effectiveness: normalised MAE")
    ax.set_title(f"guidance sweep {title}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)

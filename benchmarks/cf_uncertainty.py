"""Does the spread of ``counterfactual(..., samples=K)`` predict its error where the truth is known?

    python benchmarks/cf_uncertainty.py [pendulum|morphomnist|MODEL_DIR] [--n 48] [--samples 8] [--seed 0]
        [--eta 0] [--no-posterior] [--split test] [--batch 16]
    python benchmarks/cf_uncertainty.py --replot benchmarks/results/cf_uncertainty_pendulum.json

On the test split (by default), ``n`` random images each get one do() on one variable (variables in turn, values
drawn from the split's labels; ``tune.single_interventions``), answered at the model's own knobs (``knobs.json``)
three ways: once from the posterior mean (the plain counterfactual) and K times from K seeded draws of the
exogenous state (u from the encoder's posterior unless ``--no-posterior``, stochastic DDIM with ``--eta``). Per
image: the spread (the mean over pixels of the per-pixel std over the K draws, grey levels 0-255), and the pixel L1
(0-255, as ``true_cf_l1`` of tune and evaluate) to the rendered true counterfactual of the K-draw mean, of one draw
(the first, and the average over the K draws), and of the plain counterfactual. Reported: Spearman's rank
correlation of spread against the K-mean's error (and the plain one's), over all images, over the supported
interventions (a do() on a variable that its parents do not determine in the training labels: no trained model
can render Pendulum's shadows apart from angle and light, an error no draw shows) and within each intervened
variable, with percentile bootstrap intervals over images; the mean errors; and the seconds per image of K draws
against one plain counterfactual. Prints a summary and writes
``benchmarks/results/cf_uncertainty_DATASET.json`` and a scatter plot beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from causaldiffae import CausalDiffAE
from causaldiffae.counterfactual import counterfactual
from causaldiffae.data import BUILTIN, open_dataset
from causaldiffae.demo import SHIPPED_MODELS, dataset_of
from causaldiffae.metrics.report import pyplot, save_figure
from causaldiffae.metrics.suite import pixel_l1
from causaldiffae.metrics.truth import true_scm
from causaldiffae.tune import single_interventions

#: Bootstrap resamples of the images for the intervals of the rank correlations.
BOOTSTRAP = 2000


def spearman(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float | None]:
    """Spearman's rho of x against y with a 95 % percentile bootstrap interval over the pairs (None where fewer
    than 4 pairs or a constant resample leave it undefined)."""
    if len(x) < 4:
        return {"rho": None, "low": None, "high": None, "n": len(x)}
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            draws.append(spearmanr(x[i], y[i]).statistic)
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (None, None)
    return {"rho": rho, "low": None if low is None else float(low), "high": None if high is None else float(high),
            "n": len(x)}


def rho_text(summary: dict) -> str:
    """Spearman's rho of spread against the K-mean's error with its interval, as text."""
    r = summary["spearman_spread_error_mean"]
    interval = "" if r["low"] is None else f" [{r['low']:.2f}, {r['high']:.2f}]"
    return "n/a" if r["rho"] is None else f"{r['rho']:.2f}{interval} (n = {r['n']})"


def scatter(results: Path) -> Path:
    """The scatter plot of spread against the K-mean's error, one colour per intervened variable, from a results
    JSON, written beside it (``--replot`` redraws one without recomputing)."""
    doc = json.loads(results.read_text())
    settings, rows = doc["settings"], doc["images"]
    fig, ax = pyplot().subplots(figsize=(5.5, 4.2))
    for name in dict.fromkeys(r["variable"] for r in rows):
        subset = [r for r in rows if r["variable"] == name]
        ax.scatter([r["spread"] for r in subset], [r["error_mean"] for r in subset], s=14, label=f"do({name})")
    k = settings["samples"]
    ax.set_xlabel(f"spread: mean per-pixel std over {k} draws (0-255)")
    ax.set_ylabel(f"L1 of the {k}-draw mean to the truth (0-255)")
    ax.set_title(f"{settings['dataset']} {settings['split']}: Spearman(spread, L1)\nall {rho_text(doc['overall'])}"
                 f"; supported {rho_text(doc['supported'])}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = results.with_suffix(".png")
    save_figure(fig, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="pendulum", help="pendulum, morphomnist or a model folder")
    parser.add_argument("--n", type=int, default=48, help="images, one do() each (default 48)")
    parser.add_argument("--samples", type=int, default=8, help="draws K per query (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images, values and draws (default 0)")
    parser.add_argument("--eta", type=float, default=0.0, help="stochastic DDIM decoding in [0, 1] (default 0)")
    parser.add_argument("--no-posterior", action="store_true", help="u at the posterior mean in every draw")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--batch", type=int, default=16, help="images per counterfactual call (default 16)")
    parser.add_argument("--json", help="output (default benchmarks/results/cf_uncertainty_DATASET.json)")
    parser.add_argument("--replot", metavar="JSON", help="only redraw the scatter plot of a results JSON")
    args = parser.parse_args()
    if args.replot:
        print(f"wrote {scatter(Path(args.replot))}")
        return
    torch.set_grad_enabled(False)

    model = CausalDiffAE.from_pretrained(SHIPPED_MODELS.get(args.model, args.model))
    dataset = dataset_of(model)
    data = open_dataset(dataset, None, model.config.image_size, progress=False,
                        class_column=BUILTIN[dataset].class_column if model.config.num_classes else None)
    data = data.with_variables(model.graph.variables).split(args.split)
    scm = true_scm(data)
    if scm is None:
        raise SystemExit(f"{dataset} has no rendered true counterfactual here: nothing to measure against")
    generator = torch.Generator().manual_seed(args.seed)
    rows: list[dict] = []
    seconds = {"plain": 0.0, "samples": 0.0}
    for name, picks, values in single_interventions(data, args.n, args.seed, args.split):
        for start in range(0, len(picks), args.batch):
            index, value = picks[start: start + args.batch], values[start: start + args.batch]
            batch = data.batch(index)
            x, classes = batch["image"], batch.get("class")
            truth = scm.counterfactual(index.tolist(), {name: value})[0]
            latents = model.encode(x, labels=batch["labels"].float())
            clock = time.perf_counter()
            plain = counterfactual(model, x, {name: value}, classes=classes, latents=latents)
            seconds["plain"] += time.perf_counter() - clock
            clock = time.perf_counter()
            drawn = counterfactual(model, x, {name: value}, classes=classes, latents=latents, samples=args.samples,
                                   eta=args.eta, posterior=not args.no_posterior, generator=generator)
            seconds["samples"] += time.perf_counter() - clock
            assert drawn.spread is not None
            draws = drawn.spread.samples
            each = torch.stack([pixel_l1(d, truth) for d in draws])  # (K, B)
            columns = {"spread": drawn.spread.per_image * 255, "error_mean": pixel_l1(drawn.images, truth),
                       "error_first_draw": each[0], "error_one_draw": each.mean(0),
                       "error_plain": pixel_l1(plain.images, truth)}
            for b in range(len(index)):
                rows.append({"variable": name, "row": int(index[b]), "value": float(value[b]),
                             **{k: float(v[b]) for k, v in columns.items()},
                             "labels_std": {v: float(s[b]) for v, s in drawn.spread.labels_std.items()}})
            print(f"do({name}) {start + len(index)}/{len(picks)} images", flush=True)

    def array(key: str, subset: list[dict]) -> np.ndarray:
        return np.array([r[key] for r in subset])

    def summary(subset: list[dict], seed: int) -> dict:
        spread = array("spread", subset)
        return {"n": len(subset), "spread": float(spread.mean()),
                **{key: float(array(key, subset).mean()) for key in
                   ("error_mean", "error_first_draw", "error_one_draw", "error_plain")},
                "spearman_spread_error_mean": spearman(spread, array("error_mean", subset), seed),
                "spearman_spread_error_plain": spearman(spread, array("error_plain", subset), seed + 1)}

    overall = summary(rows, args.seed)
    determined = [v for v in model.graph.variables if model.causal_layer.labels.deterministic(v) is not None]
    supported = summary([r for r in rows if r["variable"] not in determined], args.seed)
    by_variable = {name: summary([r for r in rows if r["variable"] == name], args.seed)
                   for name in model.graph.variables}
    cost = {"seconds_per_image_plain": seconds["plain"] / len(rows),
            "seconds_per_image_samples": seconds["samples"] / len(rows),
            "ratio": seconds["samples"] / seconds["plain"]}
    out = Path(args.json or f"benchmarks/results/cf_uncertainty_{dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    knobs = model.knobs
    settings = {"model": args.model, "dataset": dataset, "split": args.split, "n": len(rows),
                "samples": args.samples, "eta": args.eta, "posterior": not args.no_posterior, "seed": args.seed,
                "depth": knobs.depth, "guidance": knobs.guidance, "steps": knobs.steps, "bootstrap": BOOTSTRAP,
                "determined_by_parents": determined,
                "threads": torch.get_num_threads(), "machine": platform.machine()}
    out.write_text(json.dumps({"settings": settings, "overall": overall, "supported": supported,
                               "by_variable": by_variable, "cost": cost,
                               "images": rows}, indent=1) + "\n")
    plot = scatter(out)

    def line(s: dict) -> str:
        return (f"n {s['n']:>3}: spread {s['spread']:.2f}, Spearman(spread, error) {rho_text(s)}; L1 K-mean "
                f"{s['error_mean']:.2f}, one draw {s['error_one_draw']:.2f} (first {s['error_first_draw']:.2f}), "
                f"plain {s['error_plain']:.2f}")

    print(f"all       {line(overall)}")
    print(f"supported {line(supported)} (not a do() on {', '.join(determined) or 'nothing'})")
    for name, s in by_variable.items():
        print(f"do({name}) {line(s)}")
    print(f"cost: {cost['seconds_per_image_samples']:.3f} s/image for {args.samples} draws against "
          f"{cost['seconds_per_image_plain']:.3f} s for one plain counterfactual ({cost['ratio']:.1f}x)")
    print(f"wrote {out} and {plot}")


if __name__ == "__main__":
    main()

"""Quality on the validation split against training compute, for training recipes side by side.

    python benchmarks/training_to_quality.py pendulum --recipe current= \
        --recipe minsnr-cosine=model.min_snr_gamma=5,train.lr_schedule=cosine \
        --steps 1500 --every 500 --seeds 0,1 [--n 64] [--predictors DIR] [--runs runs/ttq] [--knobs D,G,S] [--append]
        [--config configs/DATASET.yaml] [--reference MODEL]

Each recipe is the dataset's config (``configs/DATASET.yaml``) with its ``--set`` overrides, trained once per seed
into ``RUNS/RECIPE/seed-S`` (an existing run there is resumed, so a longer ``--steps`` extends it), keeping a
checkpoint every ``--every`` steps. Every checkpoint's EMA weights are scored on the validation split (never test)
at the shipped model's knobs (depth, guidance, steps) or those of ``--knobs``: the pixel L1 to the rendered true
counterfactual and, with ``--predictors``, the effectiveness, as ``causaldiffae tune`` scores one cell. Compute is
the images seen (steps x batch size) times the FLOPs of one training image, counted by torch's FlopCounterMode, so
it does not depend on the machine. A fine-tune (a config with ``train.init_from``; ``{seed}`` in an override is the
training seed, e.g. ``train.init_from=runs/ttq/base/seed-{seed}``) starts its curve at the compute behind the model
it starts from (``training_compute``), and its images cost what its ``train.freeze`` leaves to compute.
The model to reach (``--reference``, default the shipped one) is scored by the same instrument and drawn at its own
training compute, beside the line of a third of it. Writes ``benchmarks/results/training_to_quality_DATASET.json``
and a PNG plot beside it; a recipe is better only where its curve lies below at equal compute by more than the
spread over seeds. With ``--append`` and no ``--recipe`` only the reference is scored again and the plot redrawn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from causaldiffae import CausalDiffAE
from causaldiffae.atomic import write_text
from causaldiffae.data import ImageDataset, open_dataset
from causaldiffae.demo import SHIPPED_MODELS
from causaldiffae.knobs import Knobs
from causaldiffae.metrics.predictors import Predictors, load_predictors
from causaldiffae.metrics.report import pyplot, save_figure
from causaldiffae.metrics.settings import parse_seeds
from causaldiffae.model import load_state
from causaldiffae.training import load_run_config, train
from causaldiffae.training.checkpoint import checkpoints, step_of
from causaldiffae.training.flops import model_flops_per_image, synthetic_batch, training_compute
from causaldiffae.tune import TuneSettings, tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["pendulum", "morphomnist"])
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=KEY=VALUE,...",
                        help="a recipe: a name and its --set overrides of configs/DATASET.yaml (repeatable; none "
                             "with --append: only the shipped model is scored again and the plot redrawn)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500, help="steps between scored checkpoints")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--n", type=int, default=64, help="validation images per score")
    parser.add_argument("--predictors", help="also score the effectiveness with these predictors")
    parser.add_argument("--runs", default="runs/ttq", help="folder of the training runs")
    parser.add_argument("--append", action="store_true",
                        help="keep the other recipes and seeds of an existing --json scored at the same knobs and n")
    parser.add_argument("--knobs", metavar="DEPTH,GUIDANCE,STEPS",
                        help="score at these knobs (default: the shipped model's); choose them on val, e.g. with tune")
    parser.add_argument("--json", help="output (default benchmarks/results/training_to_quality_DATASET.json)")
    parser.add_argument("--config", help="the config the recipes change (default configs/DATASET.yaml)")
    parser.add_argument("--reference", help="the model the recipes have to reach, scored by the same instrument at "
                                            "its training compute (default: the shipped model)")
    args = parser.parse_args()
    if not args.recipe and not args.append:
        parser.error("give a --recipe, or --append to score the shipped model again into an existing --json")

    knobs = CausalDiffAE.from_pretrained(SHIPPED_MODELS[args.dataset]).knobs
    if args.knobs:
        depth, guidance, steps = args.knobs.split(",")
        knobs = Knobs(depth=float(depth), guidance=float(guidance), steps=int(steps))
    predictors = load_predictors(args.predictors) if args.predictors else None
    out = Path(args.json or f"benchmarks/results/training_to_quality_{args.dataset}.json")
    header = {"dataset": args.dataset, "split": "val", "n": args.n,
              "knobs": {"depth": knobs.depth, "guidance": knobs.guidance, "steps": knobs.steps}}
    results: dict = {}
    if args.append and out.exists():  # the recipes and seeds of earlier invocations, scored by the same instrument
        earlier = json.loads(out.read_text())
        if {k: earlier.get(k) for k in header} != header:
            raise SystemExit(f"--append: {out} was scored with {[earlier.get(k) for k in header]}, not {header}")
        results = earlier["recipes"]
    for spec in args.recipe:
        name, _, sets = spec.partition("=")
        overrides = [s for s in sets.split(",") if s]
        results.setdefault(name, {"overrides": overrides, "seeds": {}})
        if results[name]["overrides"] != overrides:
            raise SystemExit(f"recipe {name}: {out} holds it with {results[name]['overrides']}, not {overrides}")
        for seed in parse_seeds(args.seeds):
            run = Path(args.runs) / name / f"seed-{seed}"
            config = load_run_config(args.config or f"configs/{args.dataset}.yaml", [
                *(o.replace("{seed}", str(seed)) for o in overrides), f"train.seed={seed}",
                f"train.max_steps={args.steps}",
                f"train.checkpoint_every={args.every}", "train.keep_checkpoints=1000", "train.sample_every=0"])
            train(config, run, resume=bool(checkpoints(run)), allow_config_change=bool(checkpoints(run)))
            model = CausalDiffAE.from_pretrained(run)
            data = open_dataset(config.data.name, config.data.root, config.data.image_size, progress=False,
                                class_column=config.data.class_column, renderings=config.data.renderings
                                ).with_variables(model.graph.variables)
            flops = model_flops_per_image(CausalDiffAE(model.config), synthetic_batch(model), config.train.freeze)
            start = sum(s.flops for s in training_compute(config.train.init_from)) if config.train.init_from else 0.0
            points = []
            for folder in sorted(checkpoints(run), key=step_of):
                step = step_of(folder)
                load_state(model, _ema(folder), folder / "ema.safetensors")
                model.eval()
                cell = _score(model, data, knobs, args.n, predictors)
                images = step * config.train.batch_size
                points.append({"step": step, "images": images, "compute_flops": start + images * flops, **cell})
                print(f"{name} seed {seed} step {step}: true-cf L1 {cell['true_cf_l1']:.3f} ± "
                      f"{cell['true_cf_l1_sem']:.3f}, {start + images * flops:.3g} FLOPs", flush=True)
            results[name]["seeds"][str(seed)] = {"flops_per_image": flops, "start_flops": start, "points": points}
    shipped_dir = args.reference or SHIPPED_MODELS[args.dataset]
    shipped = CausalDiffAE.from_pretrained(shipped_dir).eval()
    config = load_run_config(f"configs/{args.dataset}.yaml")
    data = open_dataset(config.data.name, config.data.root, config.data.image_size, progress=False,
                        class_column=config.data.class_column).with_variables(shipped.graph.variables)
    reference = {"model": args.reference or Path(shipped_dir).name,
                 "compute_flops": sum(s.flops for s in training_compute(shipped_dir)),
                 **_score(shipped, data, knobs, args.n, predictors)}
    print(f"{reference['model']}: true-cf L1 {reference['true_cf_l1']:.3f}, {reference['compute_flops']:.3g} FLOPs")
    doc = {**header, "shipped": reference, "recipes": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(doc, indent=1) + "\n")
    plot(doc, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def _ema(folder: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint folder (what a finished run exports)."""
    return load_file(str(folder / "ema.safetensors"))


def _score(model: CausalDiffAE, data: ImageDataset, knobs: Knobs, n: int, predictors: Predictors | None) -> dict:
    """One tune cell at ``knobs`` on ``n`` validation images: true-cf L1 (± its standard error), effectiveness."""
    cell = tune(model, data, TuneSettings(depths=(knobs.depth,), weights=(knobs.guidance,), n=n, steps=knobs.steps),
                predictors, progress=False)["grid"][0]
    return {k: cell[k] for k in ("true_cf_l1", "true_cf_l1_sem", "effectiveness") if k in cell}


def plot(doc: dict, path: Path) -> None:
    """True-cf L1 against training compute, one line per recipe and seed (one colour per recipe), and the shipped
    model as a star at its own compute with a dashed line at its score: the level a recipe has to reach."""
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for i, (name, recipe) in enumerate(doc["recipes"].items()):
        for j, run in enumerate(recipe["seeds"].values()):
            xs = [p["compute_flops"] for p in run["points"]]
            ys = [p["true_cf_l1"] for p in run["points"]]
            ax.plot(xs, ys, "o-", color=f"C{i % 10}", alpha=1.0 if j == 0 else 0.5, markersize=4,
                    label=f"{name} ({len(recipe['seeds'])} seed{'s' * (len(recipe['seeds']) > 1)})" if j == 0
                    else None)
    if "shipped" in doc:
        ref = doc["shipped"]
        ax.axhline(ref["true_cf_l1"], color="k", linestyle="--", linewidth=0.8)
        ax.plot([ref["compute_flops"]], [ref["true_cf_l1"]], "k*", markersize=12,
                label=f"{ref['model']} ({ref['true_cf_l1']:.2f})")
        ax.axvline(ref["compute_flops"] / 3, color="grey", linestyle=":", linewidth=0.8, label="a third of its compute")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (FLOPs: images seen x FLOPs per training image)")
    ax.set_ylabel("true-counterfactual L1 on val (0-255)")
    knobs = doc["knobs"]
    ax.set_title(f"training to quality, {doc['dataset']} ({doc['n']} val images, depth {knobs['depth']}, guidance "
                 f"{knobs['guidance']}, {knobs['steps']} steps)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

"""Samples from pure noise of a shipped model: do they look like the data? Printed and written as JSON.

    python benchmarks/samples_from_noise.py [pendulum|morphomnist|MODEL_DIR] [--n 64] [--steps 50]

Each sample sets every variable to the labels of a test image (and, for a class-conditioned model, its class),
so the real image with the same labels is known. Per DDIM spacing (leading: the trajectory starts at
T - T/steps; trailing, the default of ``sample()``: at T - 1): the per-image colour cast (largest per-channel
mean difference, 0-255, between a sample and the test image with its labels; the same between two test
images with the same labels would be 0 for Pendulum), the spread of per-image channel means, and how well the
samples carry their labels: Pendulum's predictors (normalised MAE per variable) or MorphoMNIST's morphometry,
and for MorphoMNIST whether they show the digit asked for (the shipped digit classifier's agreement).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from causaldiffae import CausalDiffAE
from causaldiffae.counterfactual import sample
from causaldiffae.data import BUILTIN, open_dataset
from causaldiffae.demo import SHIPPED_MODELS, dataset_of
from causaldiffae.metrics.effectiveness import attribute_errors
from causaldiffae.metrics.predictors import load_predictors
from causaldiffae.metrics.truth import morphometry_labels

PREDICTORS = {name: SHIPPED_MODELS[name].parent / f"{name}-predictors" for name in ("pendulum", "morphomnist")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="pendulum", help="pendulum, morphomnist or a model folder")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="output (default benchmarks/results/samples_from_noise_DATASET.json)")
    args = parser.parse_args()

    model = CausalDiffAE.from_pretrained(SHIPPED_MODELS.get(args.model, args.model))
    dataset = dataset_of(model)
    class_column = BUILTIN[dataset].class_column if model.config.num_classes else None
    test = open_dataset(dataset, None, model.config.image_size, progress=False, class_column=class_column).split("test")
    g = torch.Generator().manual_seed(args.seed)
    batch = test.batch(torch.randperm(len(test), generator=g)[: args.n])
    real, labels = batch["image"].float(), batch["labels"].float()
    do = {name: labels[:, i] for i, name in enumerate(model.graph.variables)}
    results: dict = {"model": args.model, "dataset": dataset, "n": args.n, "steps": args.steps,
                     "guidance": args.guidance, "spacing": {}}
    for spacing in ("leading", "trailing"):
        start = time.perf_counter()
        images = sample(model, do, args.n, steps=args.steps, guidance=args.guidance, classes=batch.get("class"),
                        generator=torch.Generator().manual_seed(args.seed), spacing=spacing)
        seconds = time.perf_counter() - start
        means, real_means = images.mean(dim=(2, 3)) * 255, real.mean(dim=(2, 3)) * 255  # (n, C)
        entry = {"colour_cast": (means - real_means).abs().max(dim=1).values.mean().item(),
                 "channel_mean_std": means.std(dim=0).tolist(), "real_channel_mean_std": real_means.std(dim=0).tolist(),
                 "seconds": round(seconds, 2)}
        predictors = load_predictors(PREDICTORS[dataset]) if dataset in PREDICTORS else None
        if dataset == "morphomnist" or predictors is None:  # measured: the morphometry needs no trained reader
            read, entry["labels_read"] = morphometry_labels(images), "morphometry"
        else:
            read, entry["labels_read"] = predictors.predict(images), "predictors"
        if "class" in batch and predictors is not None and predictors.num_classes:
            entry["class_as_asked"] = (predictors.predict_class(images) == batch["class"]).float().mean().item()
        entry["label_error"] = {k: v["mae_normalized"] for k, v in attribute_errors(model.graph, read, labels).items()}
        results["spacing"][spacing] = entry
        print(f"{spacing:>8}: colour cast {entry['colour_cast']:.2f} (0-255), label error "
              + ", ".join(f"{k} {v:.3f}" for k, v in entry["label_error"].items())
              + (f", digit as asked {entry['class_as_asked']:.2f}" if "class_as_asked" in entry else "")
              + f", {seconds:.1f} s")
    out = Path(args.json or f"benchmarks/results/samples_from_noise_{dataset}.json")
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

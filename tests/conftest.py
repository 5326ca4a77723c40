"""Shared fixtures: an isolated cache folder and a tiny Pendulum folder dataset (48 images, 16 px)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.data import pendulum
from causaldiffae.data.base import write_dataset
from causaldiffae.graph import CausalGraph

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY_CONFIG = CONFIGS / "tiny.yaml"
TINY_SIZE = 16
#: The tests' tiny architecture (ModelConfig keys): seconds of CPU per model.
TINY = dict(latent_dim=4, encoder_channels=8, mechanism_hidden=16, unet_channels=8, channel_mult=(1, 2),
            attention_levels=(1,), num_timesteps=100)
#: Two variables a -> b, both in [0, 1] with min/max normalisation: the smallest graph with an edge.
AB_GRAPH = {"variables": [{"name": v, "range": [0.0, 1.0], "normalization": {"min": 0.0, "max": 1.0}} for v in "ab"],
            "edges": [["a", "b"]]}

# The models here are tiny: one intra-op thread is as fast as two on an idle machine, and with two threads
# OpenMP spin-waiting makes every op 10x slower as soon as another process uses a core.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point CAUSALDIFFAE_CACHE (and matplotlib's config dir) into a tmp folder for the whole session.

    Session-scoped so that module- and session-scoped fixtures (training runs) see it too.
    """
    cache = tmp_path_factory.mktemp("causaldiffae-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("CAUSALDIFFAE_CACHE", str(cache))
    patch.setenv("MPLCONFIGDIR", str(cache / "matplotlib"))
    patch.setenv("OMP_NUM_THREADS", "1")  # for the CLI subprocesses
    yield cache
    patch.undo()


@pytest.fixture(scope="session")
def tiny_rows() -> list[dict]:
    """48 Pendulum rows (every 150th), with their reference split; both splits are present."""
    rows = pendulum.samples()[::150][:48]
    splits = {r["split"] for r in rows}
    assert splits == {"train", "test"}, splits
    return rows


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_rows: list[dict]) -> Path:
    """A Pendulum folder dataset (graph.yaml, labels.csv, images/) of 48 images at 16 px."""
    out = tmp_path_factory.mktemp("tiny-data") / "pendulum-16"
    images = [pendulum.render(r["angle"], r["light"], TINY_SIZE) for r in tiny_rows]
    return write_dataset(out, CausalGraph.from_dict(pendulum.GRAPH), tiny_rows, images)


@pytest.fixture(scope="session")
def data_overrides(tiny_dataset: Path) -> list[str]:
    """--set overrides that point a run at the tiny dataset instead of the full generated one."""
    return ["data.name=folder", f"data.root={tiny_dataset}"]


def ab_model(**overrides: object) -> CausalDiffAE:
    """A fresh model over AB_GRAPH for 8 px grey images, one UNet level, T = 100; seeded, in eval mode. Its UNet
    head starts at zero, so it predicts no noise until a test perturbs it."""
    torch.manual_seed(0)
    config = dict(graph=AB_GRAPH, image_size=8, channels=1, latent_dim=2, encoder_channels=4, mechanism_hidden=8,
                  unet_channels=8, channel_mult=(1,), attention_levels=(), num_timesteps=100)
    return CausalDiffAE(ModelConfig(**{**config, **overrides})).eval()


def responding(model: CausalDiffAE, scale: float = 0.05) -> CausalDiffAE:
    """``model`` with every UNet weight moved by ``scale`` * N(0, 1) (torch's global generator): its head, which
    starts at zero, then predicts noise that depends on the image, the timestep and the condition."""
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def predicting_no_noise(model: CausalDiffAE) -> CausalDiffAE:
    """``model`` with its UNet's forward replaced by a stub that predicts eps = 0 for any input: DDIM inversion
    then scales the image by a known factor and decoding undoes it exactly, whatever the condition, so a
    counterfactual is the factual image (known answers for the pipeline's plumbing, independent of how the UNet is
    initialised). The weights stay, so the model still saves and loads (a loaded copy has the real forward)."""
    model.unet.forward = lambda x_t, t, cond: torch.zeros_like(x_t)  # type: ignore[method-assign]
    return model


def exit_code(argv: list[str]) -> int:
    """cli.main() returns the code of a handled error; argparse raises SystemExit for --help and usage errors."""
    from causaldiffae.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def slowed(function: Callable[..., T], seconds: float) -> Callable[..., T]:
    """``function``, starting ``seconds`` late: widens the moment of a write that a test wants a read to land in."""
    def late(*args: object, **kwargs: object) -> T:
        time.sleep(seconds)
        return function(*args, **kwargs)
    return late


def poll_while(read: Callable[[], T], work: Callable[[], object], pause: float = 0.005) -> list[T | Exception]:
    """Call ``read`` over and over in a thread while ``work`` runs here; what each call returned or raised."""
    results: list[T | Exception] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            try:
                results.append(read())
            except Exception as err:  # the test judges every outcome
                results.append(err)
            time.sleep(pause)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        work()
    finally:
        done.set()
        thread.join()
    return results

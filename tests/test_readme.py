"""The README's Python example runs as written, against the shipped Pendulum model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_python_example_runs_and_returns_what_it_says(monkeypatch) -> None:
    blocks = _python_blocks()
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(ROOT)  # the example names the shipped model by its path in the repository
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    x, out, grid, new = namespace["x"], namespace["out"], namespace["grid"], namespace["new"]
    assert out.images.shape == x.shape and 0 <= out.images.min() and out.images.max() <= 1
    assert set(out.labels_cf) == set(namespace["graph"].variables) and out.labels_cf["angle"].shape == (len(x),)
    # one value per image: the model reads back the asked angles (label units) exactly, it set them
    torch.testing.assert_close(out.labels_cf["angle"], torch.tensor([0.0, 10.0, 20.0, 30.0]), atol=1e-3, rtol=0)
    assert grid.images.shape == (3, *x.shape)
    assert new.shape == (8, *x.shape[1:])
    assert os.getcwd() == str(ROOT)

"""The folder dataset layout: write/load round trip, the decoded-image cache, errors naming the problem."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from causaldiffae.data import cache_dir, dataset_root, load_dataset, open_dataset, pendulum, write_dataset
from causaldiffae.data.base import ImageDataset, hide_labels, read_labels
from causaldiffae.graph import CausalGraph
from conftest import TINY_SIZE

SMALL_GRAPH = CausalGraph.from_dict({
    "variables": [{"name": "size", "normalization": {"mean": 0.0, "std": 1.0}}, "colour"],
    "edges": [["size", "colour"]],
})


def _small(tmp_path: Path, n: int = 4, size: int = 8, channels: int = 3, labels=None) -> Path:
    """A little dataset of random images, with both splits."""
    rng = np.random.default_rng(0)
    shape = (size, size, channels) if channels > 1 else (size, size)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    rows = [{"file": f"img{i}.png", "split": "test" if i % 2 else "train",
             "size": 0.1 * i + 1 / 3, "colour": -float(i)} for i in range(n)]
    for i, row in enumerate(labels or []):
        rows[i].update(row)
    return write_dataset(tmp_path / "data", SMALL_GRAPH, rows, images)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def _edit_csv(root: Path, old: str, new: str) -> None:
    path = root / "labels.csv"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# -- round trip ----------------------------------------------------------------------------------------


def test_round_trip_of_the_pendulum_subset(tiny_dataset, tiny_rows):
    ds = load_dataset(tiny_dataset, TINY_SIZE)
    assert ds.graph == CausalGraph.from_dict(pendulum.GRAPH)
    assert ds.files == [r["file"] for r in tiny_rows]
    assert ds.splits == [r["split"] for r in tiny_rows]
    assert ds.images.dtype == torch.uint8
    assert ds.images.shape == (len(tiny_rows), 3, TINY_SIZE, TINY_SIZE)
    assert (ds.image_size, ds.channels) == (TINY_SIZE, 3)
    for i in (0, 17, len(tiny_rows) - 1):
        r = tiny_rows[i]
        expected = pendulum.render(r["angle"], r["light"], TINY_SIZE).transpose(2, 0, 1)
        assert np.array_equal(ds.images[i].numpy(), expected)
    expected = torch.tensor([[r[v] for v in pendulum.VARIABLES] for r in tiny_rows], dtype=torch.float32)
    assert torch.equal(ds.labels, expected)


def test_labels_are_written_exactly(tiny_dataset, tiny_rows):
    _, _, labels = read_labels(tiny_dataset, CausalGraph.from_dict(pendulum.GRAPH))
    assert labels.dtype == np.float64
    exact = np.array([[r[v] for v in pendulum.VARIABLES] for r in tiny_rows])
    assert np.array_equal(labels, exact)  # bit-exact float64, not merely close


def test_split_selection(tiny_dataset, tiny_rows):
    ds = load_dataset(tiny_dataset, TINY_SIZE)
    train, test = ds.split("train"), ds.split("test")
    assert len(train) + len(test) == len(ds)
    assert set(train.splits) == {"train"} and set(test.splits) == {"test"}
    assert train.files == [r["file"] for r in tiny_rows if r["split"] == "train"]
    with pytest.raises(ValueError, match="val"):
        ds.split("val")  # no rows
    with pytest.raises(ValueError, match="'dev'"):
        ds.split("dev")


def test_batch_is_float_in_unit_range(tiny_dataset):
    ds = load_dataset(tiny_dataset, TINY_SIZE)
    batch = ds.batch([0, 3])
    assert batch["image"].dtype == torch.float32
    assert batch["image"].shape == (2, 3, TINY_SIZE, TINY_SIZE)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert torch.equal(batch["image"], ds.images[[0, 3]].float() / 255)
    assert torch.equal(batch["labels"], ds.labels[[0, 3]])


def test_grayscale_dataset_has_one_channel(tmp_path):
    ds = load_dataset(_small(tmp_path, channels=1), 8)
    assert ds.images.shape == (4, 1, 8, 8)


def test_native_size_when_no_size_is_given(tmp_path):
    ds = load_dataset(_small(tmp_path, size=12))
    assert ds.image_size == 12


def test_missing_labels_load_as_nan(tmp_path):
    root = _small(tmp_path, labels=[{"colour": None}, {"size": math.nan, "colour": None}])
    ds = load_dataset(root, 8)
    assert torch.isnan(ds.labels[0, 1]) and not torch.isnan(ds.labels[0, 0])
    assert torch.isnan(ds.labels[1]).all()
    assert not torch.isnan(ds.labels[2:]).any()
    # the CSV holds empty cells, not the text 'nan'
    assert "nan" not in (root / "labels.csv").read_text().lower()


def test_write_dataset_replaces_an_existing_folder(tmp_path):
    root = _small(tmp_path, n=4)
    (root / "stale.txt").write_text("old")
    root = _small(tmp_path, n=2)
    assert not (root / "stale.txt").exists()
    assert len(load_dataset(root, 8)) == 2


# -- the decoded-image cache -----------------------------------------------------------------------------


def test_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    from causaldiffae.data import image_folder

    root = _small(tmp_path)
    first = load_dataset(root, 8)
    caches = list((root / "cache").glob("*.npy"))
    assert len(caches) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache matches")

    monkeypatch.setattr(image_folder, "_decode_all", no_decoding)
    second = load_dataset(root, 8)
    assert torch.equal(first.images, second.images)


def test_cache_is_invalidated_when_labels_change(tmp_path):
    root = _small(tmp_path)
    load_dataset(root, 8)
    _edit_csv(root, "img3.png", "img2.png")  # a different CSV must not reuse the old decode
    ds = load_dataset(root, 8)
    assert torch.equal(ds.images[3], ds.images[2])


def test_read_only_dataset_still_loads(tmp_path):
    root = _small(tmp_path)
    root.chmod(0o555)
    try:
        if _writable(root):
            pytest.skip("running as a user that ignores file permissions (root)")
        assert len(load_dataset(root, 8)) == 4
    finally:
        root.chmod(0o755)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


# -- errors -------------------------------------------------------------------------------------------


def test_missing_image_file_is_named(tmp_path):
    root = _small(tmp_path)
    (root / "images" / "img2.png").unlink()
    with pytest.raises(FileNotFoundError, match="img2.png"):
        load_dataset(root, 8)


def test_unreadable_image_is_named(tmp_path):
    root = _small(tmp_path)
    (root / "images" / "img3.png").write_bytes(b"definitely not a png" * 10)
    with pytest.raises(ValueError, match="img3.png"):
        load_dataset(root, 8)


def test_truncated_image_is_named(tmp_path):
    root = _small(tmp_path, size=16)
    path = root / "images" / "img0.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match="img0.png"):
        load_dataset(root, 16)


def test_label_that_is_not_a_number_names_variable_and_line(tmp_path):
    root = _small(tmp_path)
    _edit_csv(root, "-2.0", "blue")  # colour of img2, on line 4 (header is line 1)
    with pytest.raises(ValueError, match="colour") as err:
        load_dataset(root, 8)
    assert "line 4" in str(err.value) and "'blue'" in str(err.value)


def test_non_finite_label_is_rejected(tmp_path):
    root = _small(tmp_path)
    _edit_csv(root, "-2.0", "inf")
    with pytest.raises(ValueError, match="colour"):
        load_dataset(root, 8)


def test_graph_variable_without_a_column_is_named(tmp_path):
    root = _small(tmp_path)
    (root / "graph.yaml").write_text(
        "variables: [size, colour, weight]\nedges: [[size, colour]]\n"
    )
    with pytest.raises(ValueError, match="weight"):
        load_dataset(root, 8)


def test_bad_split_name_is_named(tmp_path):
    root = _small(tmp_path)
    _edit_csv(root, "img1.png,test", "img1.png,validation")
    with pytest.raises(ValueError, match="'validation'") as err:
        load_dataset(root, 8)
    assert "line 3" in str(err.value)


def test_image_of_another_size(tmp_path):
    root = _small(tmp_path, size=8)
    img = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(img).save(root / "images" / "img2.png")
    with pytest.raises(ValueError, match="img2.png") as err:
        load_dataset(root, 8)
    assert "12x12" in str(err.value) and "resize" in str(err.value)
    ds = load_dataset(root, 8, resize=True)
    assert ds.images.shape == (4, 3, 8, 8)


def test_resize_to_a_requested_size(tmp_path):
    root = _small(tmp_path, size=12)
    with pytest.raises(ValueError, match="resize"):
        load_dataset(root, 8)
    assert load_dataset(root, 8, resize=True).images.shape == (4, 3, 8, 8)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere")
    root = _small(tmp_path)
    (root / "labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        load_dataset(root, 8)


def test_empty_labels_csv(tmp_path):
    root = _small(tmp_path)
    (root / "labels.csv").write_text("file,split,size,colour\n")
    with pytest.raises(ValueError, match="no rows"):
        load_dataset(root, 8)


# -- weak supervision ----------------------------------------------------------------------------------


def _in_memory(n_train: int = 42, n_other: int = 6) -> ImageDataset:
    """Rows: n_train train, then n_other val, then n_other test; labels (i, -i) for row i, no NaN."""
    n = n_train + 2 * n_other
    splits = ["train"] * n_train + ["val"] * n_other + ["test"] * n_other
    labels = torch.stack([torch.arange(n).float(), -torch.arange(n).float()], dim=1)
    return ImageDataset(Path("mem"), SMALL_GRAPH, [f"{i}.png" for i in range(n)], splits,
                        torch.zeros(n, 1, 2, 2, dtype=torch.uint8), labels)


def _kept(data: ImageDataset) -> torch.Tensor:
    """(n_vars,) how many train labels remain per variable."""
    train = torch.tensor([s == "train" for s in data.splits])
    return (~data.labels[train].isnan()).sum(dim=0)


def test_hide_labels_keeps_round_f_n_per_variable_and_spares_val_and_test():
    data = _in_memory()
    # 0.25 * 42 = 10.5 -> 10 (Python's round: half to even); 0.3 * 42 = 12.6 -> 13; 0.001 * 42 -> at least 1
    assert _kept(hide_labels(data, 0.25, seed=0)).tolist() == [10, 10]
    assert _kept(hide_labels(data, 0.3, seed=0)).tolist() == [13, 13]
    assert _kept(hide_labels(data, 0.001, seed=0)).tolist() == [1, 1]
    weak = hide_labels(data, 0.25, seed=0)
    assert torch.equal(weak.labels[42:], data.labels[42:])  # val and test untouched
    kept = ~weak.labels[:42].isnan()
    assert torch.equal(weak.labels[:42][kept], data.labels[:42][kept])  # the kept labels are the true ones
    assert torch.equal(data.labels, _in_memory().labels)  # the input is not modified
    assert weak.images is data.images and weak.splits == data.splits


def test_hide_labels_is_seeded_and_independent_per_variable():
    data = _in_memory()
    a, b, c = (hide_labels(data, 0.25, seed=s).labels[:42].isnan() for s in (0, 0, 1))
    assert torch.equal(a, b)  # same seed, same mask
    assert not torch.equal(a, c)  # another seed, another mask
    assert not torch.equal(a[:, 0], a[:, 1])  # the variables' masks are drawn apart
    one = hide_labels(data, {"colour": 0.25}, seed=0).labels[:42].isnan()
    assert not one[:, 0].any() and torch.equal(one[:, 1], a[:, 1])  # a variable's mask ignores the others


def test_hide_labels_counts_only_labels_that_are_there_and_names_unknown_variables():
    data = _in_memory()
    data.labels[:20, 0] = math.nan  # 22 train labels of size remain: 0.5 * 22 = 11
    weak = hide_labels(data, 0.5, seed=3)
    assert _kept(weak).tolist() == [11, 21]
    assert weak.labels[:20, 0].isnan().all()
    with pytest.raises(ValueError, match=r"data.label_fraction names 'shape'.*variables are size, colour"):
        hide_labels(data, {"shape": 0.5}, seed=0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        hide_labels(data, {"size": 0.0}, seed=0)


# -- built-in datasets ---------------------------------------------------------------------------------


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSALDIFFAE_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    assert dataset_root("pendulum", None, 16) == tmp_path / "elsewhere" / "pendulum-16-v2"  # layout 2: val split
    assert dataset_root("morphomnist", None, 28) == tmp_path / "elsewhere" / "morphomnist-28-v2"  # val split too
    assert dataset_root("pendulum", tmp_path / "mine", 16) == tmp_path / "mine"


def test_folder_dataset_needs_a_root():
    with pytest.raises(ValueError, match="root"):
        dataset_root("folder", None, 16)


def test_open_dataset_uses_an_existing_folder(tiny_dataset):
    ds = open_dataset("pendulum", tiny_dataset, TINY_SIZE, progress=False)
    assert len(ds) == 48


def test_every_list_of_built_in_datasets_is_the_registry():
    """data.BUILTIN is the one list: the true SCMs, the demo's recognition of a model and the predictors' default
    sizes read it; the run config's data.name and `reproduce`'s datasets (kept literal so that --help stays light)
    must agree with it."""
    import typing

    from causaldiffae.cli import build_parser
    from causaldiffae.data import BUILTIN
    from causaldiffae.reproduce import PLANS
    from causaldiffae.training.config import DataConfig

    assert set(typing.get_args(typing.get_type_hints(DataConfig)["name"])) == {*BUILTIN, "folder"}
    assert set(PLANS) == set(BUILTIN)
    reproduce = build_parser()._subparsers._group_actions[0].choices["reproduce"]
    assert set(next(a for a in reproduce._actions if a.dest == "dataset").choices) == set(BUILTIN)
    for builtin in BUILTIN.values():
        assert tuple(CausalGraph.from_dict(builtin.graph).variables) == builtin.variables
    assert (BUILTIN["pendulum"].image_size, BUILTIN["morphomnist"].image_size) == (32, 28)
    assert BUILTIN["morphomnist"].class_column == "digit" and BUILTIN["pendulum"].class_column is None

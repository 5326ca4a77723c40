"""Catalogue of bad datasets (issue 11, the data part): every case builds a bad input in tmp_path, runs the CLI
(``causaldiffae data check DIR``) or the API, and expects exit code 2 with one line on stderr that names the culprit,
no traceback, and every file the user had unchanged. Then the inputs that used to give silently wrong results
(stale cache, mixed modes, 16-bit images, a byte-order mark, variables in another order) and property-based tests
of the labels.csv and graph.yaml parsers."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.data import load_dataset, pendulum, write_dataset
from causaldiffae.data.base import read_labels
from causaldiffae.data.image_folder import MAX_PIXELS, read_image
from causaldiffae.graph import CausalGraph
from conftest import exit_code

GRAPH = CausalGraph.from_dict({
    "variables": [{"name": "size", "normalization": {"mean": 0.0, "std": 1.0}}, "colour"],
    "edges": [["size", "colour"]],
})
SIZE = 8


def _make(folder: Path, n: int = 4, channels: int = 3) -> Path:
    """A little RGB dataset of random images at 8 px: img0.png .. img{n-1}.png, splits train/test alternating."""
    rng = np.random.default_rng(0)
    shape = (SIZE, SIZE, channels) if channels > 1 else (SIZE, SIZE)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    rows = [{"file": f"img{i}.png", "split": "test" if i % 2 else "train", "size": 0.5 * i, "colour": -float(i)}
            for i in range(n)]
    return write_dataset(folder, GRAPH, rows, images)


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mode of every file under ``folder`` except the tool's own caches (links not followed)."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        if "cache" in Path(dirpath).relative_to(folder).parts:
            continue
        for name in names:
            path = Path(dirpath) / name
            data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
            out[str(path.relative_to(folder))] = (hashlib.sha256(data).hexdigest(), path.lstat().st_mode)
    return out


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG")


def _png_header_only(path: Path, width: int, height: int, depth: int = 8, colour: int = 0,
                     data: bytes = b"\0" * 64) -> None:
    """A PNG written by hand: its header claims width x height pixels, whatever ``data`` (filtered rows) holds."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data))
                     + chunk(b"IEND", b""))


def _replace_in_csv(root: Path, old: str, new: str) -> None:
    text = (root / "labels.csv").read_text()
    assert old in text, (old, text)
    (root / "labels.csv").write_text(text.replace(old, new, 1))


def _secret(tmp: Path) -> Path:
    """An image outside the dataset that must never be read."""
    path = tmp / "secret.png"
    _png(path, np.full((SIZE, SIZE, 3), 7, dtype=np.uint8))
    return path


# -- each case: (setup(root, tmp) -> the words the one error line must hold, extra CLI args) ---------------


def _dotdot(root: Path, tmp: Path) -> list[str]:
    _secret(tmp)
    _replace_in_csv(root, "img0.png", "../../secret.png")
    return ["'../../secret.png'", "line 2", "inside images/"]


def _absolute(root: Path, tmp: Path) -> list[str]:
    secret = _secret(tmp)
    _replace_in_csv(root, "img1.png", str(secret))
    return [repr(str(secret)), "line 3"]


def _symlink_file_out(root: Path, tmp: Path) -> list[str]:
    secret = _secret(tmp)
    (root / "images" / "img2.png").unlink()
    (root / "images" / "img2.png").symlink_to(secret)
    return ["'img2.png'", "line 4", "outside"]


def _symlink_dir_out(root: Path, tmp: Path) -> list[str]:
    _secret(tmp)
    (root / "images" / "sub").symlink_to(tmp, target_is_directory=True)
    _replace_in_csv(root, "img0.png", "sub/secret.png")
    return ["'sub/secret.png'", "line 2", "outside"]


def _symlink_loop(root: Path, tmp: Path) -> list[str]:
    (root / "images" / "img1.png").unlink()
    (root / "images" / "img1.png").symlink_to("img1.png")
    return ["'img1.png'", "line 3"]


def _not_an_image(root: Path, tmp: Path) -> list[str]:
    (root / "images" / "img3.png").write_text("this is a text file, not a picture\n")
    return ["'img3.png'", "line 5", "not an image"]


def _directory(root: Path, tmp: Path) -> list[str]:
    (root / "images" / "img1.png").unlink()
    (root / "images" / "img1.png").mkdir()
    return ["'img1.png'", "not a file"]


def _missing(root: Path, tmp: Path) -> list[str]:
    (root / "images" / "img2.png").unlink()
    return ["'img2.png'", "line 4", "missing"]


def _missing_after_cache(root: Path, tmp: Path) -> list[str]:
    load_dataset(root)  # the cache holds img2's pixels; data check must still see the file is gone
    (root / "images" / "img2.png").unlink()
    return ["'img2.png'", "missing"]


def _text_after_cache(root: Path, tmp: Path) -> list[str]:
    load_dataset(root)
    (root / "images" / "img0.png").write_text("not an image any more")
    return ["'img0.png'", "not an image"]


def _truncated(root: Path, tmp: Path) -> list[str]:
    path = root / "images" / "img1.png"
    path.write_bytes(path.read_bytes()[:60])
    return ["'img1.png'", "line 3"]


def _bomb_header(root: Path, tmp: Path) -> list[str]:
    _png_header_only(root / "images" / "img0.png", 14000, 14000)  # PIL's own bomb limit
    return ["'img0.png'", "line 2", "pixels"]


def _large_header(root: Path, tmp: Path) -> list[str]:
    _png_header_only(root / "images" / "img1.png", 8000, 8000)  # below PIL's limit, above ours
    return ["'img1.png'", "8000x8000", "bomb"]


def _wrong_size(root: Path, tmp: Path) -> list[str]:
    _png(root / "images" / "img3.png", np.zeros((12, 12, 3), dtype=np.uint8))
    return ["'img3.png'", "12x12", "resize"]


def _short_row(root: Path, tmp: Path) -> list[str]:
    _replace_in_csv(root, "img1.png,test,0.5,-1.0", "img1.png,test")
    return ["labels.csv line 3", "2 cell(s)", "4 columns"]


def _long_row(root: Path, tmp: Path) -> list[str]:
    _replace_in_csv(root, "img2.png,train,1.0,-2.0", "img2.png,train,1.0,-2.0,9")
    return ["labels.csv line 4", "5 cell(s)"]


def _repeated_column(root: Path, tmp: Path) -> list[str]:
    text = (root / "labels.csv").read_text().splitlines()
    text = [line + ("," + line.split(",")[-1] if i else ",colour") for i, line in enumerate(text)]
    (root / "labels.csv").write_text("\n".join(text) + "\n")
    return ["labels.csv", "'colour'", "more than once"]


def _empty_file_cell(root: Path, tmp: Path) -> list[str]:
    _replace_in_csv(root, "img3.png", "")
    return ["labels.csv line 5", "file ''"]


def _huge_cell(root: Path, tmp: Path) -> list[str]:
    _replace_in_csv(root, "img1.png", "x" * 200_000)
    return ["labels.csv line 3", "not valid CSV"]


def _nan_label(root: Path, tmp: Path) -> list[str]:
    _replace_in_csv(root, "-2.0", "nan")
    return ["labels.csv line 4", "colour", "'nan'", "empty"]


def _inf_label(root: Path, tmp: Path) -> list[str]:
    _replace_in_csv(root, "1.5", "-inf")
    return ["labels.csv line 5", "size", "finite"]


def _labels_latin1(root: Path, tmp: Path) -> list[str]:
    raw = (root / "labels.csv").read_bytes().replace(b"img2.png", "imgé.png".encode("latin-1"))
    (root / "labels.csv").write_bytes(raw)
    offset = raw.index(bytes([0xE9]))
    return ["labels.csv", "not UTF-8", "byte 0xe9", f"offset {offset}"]


def _graph_latin1(root: Path, tmp: Path) -> list[str]:
    raw = (root / "graph.yaml").read_text().replace("name: colour", "name: colour\n  description: \xb0C", 1)
    (root / "graph.yaml").write_bytes(raw.encode("latin-1"))
    offset = raw.encode("latin-1").index(bytes([0xB0]))
    return ["graph.yaml", "not UTF-8", "byte 0xb0", f"offset {offset}"]


def _graph_utf16(root: Path, tmp: Path) -> list[str]:
    (root / "graph.yaml").write_bytes((root / "graph.yaml").read_text().encode("utf-16"))
    return ["graph.yaml", "not UTF-8", "offset 0"]


CASES: dict[str, Callable[[Path, Path], list[str]]] = {
    f.__name__.lstrip("_"): f for f in [
        _dotdot, _absolute, _symlink_file_out, _symlink_dir_out, _symlink_loop, _not_an_image, _directory,
        _missing, _missing_after_cache, _text_after_cache, _truncated, _bomb_header, _large_header, _wrong_size,
        _short_row, _long_row, _repeated_column, _empty_file_cell, _huge_cell, _nan_label, _inf_label,
        _labels_latin1, _graph_latin1, _graph_utf16,
    ]
}


#: Cases also run with --size (resizing every image), where a bomb or an escape must be refused just the same.
RESIZED = ["dotdot", "symlink_file_out", "bomb_header", "large_header", "not_an_image"]


@pytest.mark.parametrize("case, resize", [(c, False) for c in CASES] + [(c, True) for c in RESIZED],
                         ids=[*CASES, *(f"{c}-resize" for c in RESIZED)])
def test_bad_dataset_is_refused_in_one_line(case, resize, tmp_path, capsys):
    root = _make(tmp_path / "user" / "data")
    words = CASES[case](root, tmp_path / "user")
    capsys.readouterr()
    before = _snapshot(tmp_path / "user")
    code = exit_code(["data", "check", str(root), *(["--size", "16"] if resize else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("causaldiffae: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _snapshot(tmp_path / "user") == before


def test_nothing_outside_images_is_read_even_through_the_api(tmp_path, monkeypatch):
    root = _make(tmp_path / "data")
    secret = _secret(tmp_path)
    _replace_in_csv(root, "img0.png", "../../secret.png")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(Path(fp)) or real_open(fp, *a, **k))
    with pytest.raises(ValueError, match="secret.png"):
        load_dataset(root)
    assert secret not in opened and not opened  # refused while parsing labels.csv, before any image
    assert not (root / "cache").exists()


def test_a_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    root = _make(tmp_path / "data")
    _png_header_only(root / "images" / "img1.png", 5000, 4000)
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a bomb") if self.width > SIZE
                        else real_load(self))
    with pytest.raises(ValueError, match=f"5000x4000 pixels, more than the {MAX_PIXELS:,}"):
        load_dataset(root, SIZE, resize=True)


def test_read_image_for_single_files(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 9000, 9000)
    with pytest.raises(ValueError, match="bomb.png.*9000x9000"):
        read_image(tmp_path / "bomb.png")
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        read_image(tmp_path / "nothing.png")
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.mode == "L" and np.asarray(img).max() == 255


def test_class_column_with_a_missing_value_names_the_line(tmp_path):
    rows = [{"file": f"img{i}.png", "split": "train", "size": 0.0, "colour": 0.0, "cls": i} for i in range(3)]
    rows[1]["cls"] = None
    root = write_dataset(tmp_path / "data", GRAPH, rows, [np.zeros((4, 4), np.uint8)] * 3, ["cls"])
    with pytest.raises(ValueError, match="'cls'.*line 3 has an empty cell") as err:
        load_dataset(root, class_column="cls")
    assert f"{root / 'labels.csv'} line 3" in str(err.value)  # the file by its path, the row, the column


def test_subfolders_and_links_inside_images_are_fine(tmp_path):
    root = _make(tmp_path / "data")
    (root / "images" / "sub").mkdir()
    (root / "images" / "img1.png").rename(root / "images" / "sub" / "one.png")
    (root / "images" / "img1.png").symlink_to(Path("sub") / "one.png")  # a link that stays inside
    (root / "images" / "linked").symlink_to(root / "images" / "sub", target_is_directory=True)
    _replace_in_csv(root, "img3.png", "linked/one.png")
    ds = load_dataset(root)
    assert torch.equal(ds.images[1], ds.images[3])


# -- the decoded-image cache ----------------------------------------------------------------------------


def test_an_edited_image_is_read_again(tmp_path):
    root = _make(tmp_path / "data")
    load_dataset(root)
    new = np.full((SIZE, SIZE, 3), 200, dtype=np.uint8)
    _png(root / "images" / "img1.png", new)
    ds = load_dataset(root)
    assert np.array_equal(ds.images[1].numpy(), new.transpose(2, 0, 1))
    assert len(list((root / "cache").glob("*.npy"))) == 1  # the stale decode is removed


def test_a_replaced_image_with_the_same_size_and_time_is_read_again(tmp_path):
    root = _make(tmp_path / "data")
    load_dataset(root)
    path = root / "images" / "img2.png"
    old = path.stat()
    replacement = tmp_path / "other.png"
    pixels = np.full((SIZE, SIZE, 3), 9, dtype=np.uint8)
    _png(replacement, pixels)
    data = replacement.read_bytes()
    replacement.write_bytes(data + b"\0" * (old.st_size - len(data)) if len(data) < old.st_size else data)
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, path)  # a new inode
    assert np.array_equal(load_dataset(root).images[2].numpy(), pixels.transpose(2, 0, 1))


@pytest.mark.parametrize("damage", ["truncated", "object_array", "wrong_rows", "wrong_dtype", "not_npy"])
def test_a_damaged_cache_is_rebuilt(tmp_path, damage):
    root = _make(tmp_path / "data")
    good = load_dataset(root).images
    (cache,) = (root / "cache").glob("*.npy")
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:100])
    elif damage == "object_array":
        np.save(cache, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif damage == "wrong_rows":
        np.save(cache, good.numpy()[:2])
    elif damage == "wrong_dtype":
        np.save(cache, good.numpy().astype(np.float32))
    else:
        cache.write_text("garbage")
    assert torch.equal(load_dataset(root).images, good)
    assert np.array_equal(np.load(cache, allow_pickle=False), good.numpy())  # and written again


# -- one mode for the whole dataset; 16-bit ----------------------------------------------------------------


def test_a_grey_first_image_does_not_make_an_rgb_dataset_grey(tmp_path):
    root = _make(tmp_path / "data")
    grey = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)
    _png(root / "images" / "img0.png", grey)
    ds = load_dataset(root)
    assert ds.channels == 3
    assert all(np.array_equal(ds.images[0, c].numpy(), grey) for c in range(3))
    colour = np.asarray(Image.open(root / "images" / "img1.png")).transpose(2, 0, 1)
    assert np.array_equal(ds.images[1].numpy(), colour)


def test_modes_are_converted_consistently(tmp_path):
    root = _make(tmp_path / "data", channels=1)
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    grey_palette = Image.fromarray(np.full((SIZE, SIZE), 3, np.uint8), "P")
    grey_palette.putpalette([v for i in range(256) for v in (i, i, i)])
    grey_palette.save(root / "images" / "img1.png")
    assert load_dataset(root).channels == 1  # grey images and a palette of greys stay one channel
    _png(root / "images" / "img2.png", rgba)
    ds = load_dataset(root)
    assert ds.channels == 3
    assert ds.images[2, :, 0, 0].tolist() == [255, 0, 0]  # alpha dropped
    assert ds.images[1, :, 0, 0].tolist() == [3, 3, 3]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    root = _make(tmp_path / "data", channels=1)
    deep = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(root / "images" / "img0.png")
    assert Image.open(root / "images" / "img0.png").mode.startswith("I")
    ds = load_dataset(root)
    expected = np.round(deep / 257).astype(np.uint8)
    assert np.abs(ds.images[0, 0].numpy().astype(int) - expected).max() <= 1
    assert ds.images[0, 0].numpy().max() < 255  # 63000 / 65535 of full scale, not white


def test_sixteen_bit_colour_is_scaled(tmp_path):
    root = _make(tmp_path / "data")
    deep = (np.arange(SIZE * SIZE * 3).reshape(SIZE, SIZE, 3) * 300).astype(np.uint16)
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in deep)
    _png_header_only(root / "images" / "img0.png", SIZE, SIZE, depth=16, colour=2, data=raw)
    ds = load_dataset(root)
    assert np.abs(ds.images[0].numpy().astype(int) - deep.transpose(2, 0, 1) / 257).max() <= 1


# -- encodings -----------------------------------------------------------------------------------------


def test_byte_order_marks_are_accepted(tmp_path, capsys):
    root = _make(tmp_path / "data")
    expected = load_dataset(root).labels
    for name in ("labels.csv", "graph.yaml"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    assert torch.equal(load_dataset(root).labels, expected)
    assert exit_code(["data", "check", str(root)]) == 0
    assert "4 images" in capsys.readouterr().out


def test_windows_line_endings_are_accepted(tmp_path):
    root = _make(tmp_path / "data")
    expected = load_dataset(root).labels
    (root / "labels.csv").write_bytes((root / "labels.csv").read_bytes().replace(b"\n", b"\r\n"))
    assert torch.equal(load_dataset(root).labels, expected)


# -- variables are matched by name ------------------------------------------------------------------------


def test_with_variables_reorders_by_name(tmp_path):
    ds = load_dataset(_make(tmp_path / "data"))
    swapped = ds.with_variables(["colour", "size"])
    assert swapped.graph.variables == ["colour", "size"]
    assert swapped.graph.edges == ds.graph.edges
    assert torch.equal(swapped.labels, ds.labels[:, [1, 0]])
    assert ds.with_variables(["size", "colour"]) is ds
    with pytest.raises(ValueError, match="lacks weight.*has colour besides"):
        ds.with_variables(["size", "weight"])


def test_a_variable_without_labels_in_a_split_is_named_not_a_crash(tmp_path):
    """TrueSCM draws do() values over the labels' range where the graph declares none: an unlabelled column is a
    ValueError naming the variable and the split, not a crash in torch.min."""
    from causaldiffae.metrics.truth import TrueSCM

    root = _make(tmp_path / "d")
    _replace_in_csv(root, ",-1.0\n", ",\n")  # the one test row of 'colour' loses its label (img1)
    _replace_in_csv(root, ",-3.0\n", ",\n")
    test = load_dataset(root).split("test")
    assert torch.isnan(test.labels[:, 1]).all()
    with pytest.raises(ValueError, match=r"'colour' has no labels in the test split"):
        TrueSCM("pendulum", test).value_range("colour")
    assert TrueSCM("pendulum", test).value_range("size") == (0.5, 1.5)


def test_counterfactual_reads_labels_by_name_from_a_reordered_dataset(tmp_path, capsys):
    torch.manual_seed(0)
    config = ModelConfig(graph=pendulum.GRAPH, image_size=16, channels=3, latent_dim=4, encoder_channels=8,
                         mechanism_hidden=16, unet_channels=8, channel_mult=(1, 2), attention_levels=(1,),
                         num_timesteps=20)
    CausalDiffAE(config).save_pretrained(tmp_path / "run")
    spec = dict(pendulum.GRAPH)
    spec["variables"] = list(reversed(spec["variables"]))  # shadow_position, shadow_length, light, angle
    values = {"angle": 10.0, "light": 70.0, "shadow_length": 5.0, "shadow_position": 8.0}
    rows = [{"file": "a.png", "split": "test", **values}]
    data = write_dataset(tmp_path / "data", CausalGraph.from_dict(spec), rows, [np.zeros((16, 16, 3), np.uint8)])
    assert (data / "labels.csv").read_text().startswith("file,split,shadow_position,")
    out = tmp_path / "cf" / "cf.png"
    code = exit_code(["counterfactual", str(tmp_path / "run"), "--data", str(data), "--index", "0", "--steps", "2",
                      "--do", "angle=20", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["factual_labels"][0] == pytest.approx(values)


# -- property-based: the parsers a user feeds -------------------------------------------------------------

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8).filter(
    lambda s: s.strip() == s and s not in {"file", "split"})
LABELS = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))
FILES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_ .-]{0,10}(/[A-Za-z0-9_]{1,5})?", fullmatch=True).filter(
    lambda s: ".." not in s.split("/"))
FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(names=st.lists(NAMES, min_size=1, max_size=4, unique=True), data=st.data(), bom=st.booleans(),
       newline=st.sampled_from(["\n", "\r\n"]))
def test_labels_csv_round_trips_by_column_name(tmp_path, names, data, bom, newline):
    graph = CausalGraph.from_dict({"variables": names, "edges": []})
    n = data.draw(st.integers(1, 5))
    rows = [{"file": data.draw(FILES), "split": data.draw(st.sampled_from(["train", "val", "test"])),
             **{v: data.draw(LABELS) for v in names}} for _ in range(n)]
    columns = data.draw(st.permutations(["file", "split", *names]))  # any column order
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else repr(row[c]) if c in names else row[c] for c in columns])
    (tmp_path / "labels.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode())
    files, splits, table = read_labels(tmp_path, graph)
    assert files == [r["file"] for r in rows] and splits == [r["split"] for r in rows]
    expected = np.array([[math.nan if r[v] is None else r[v] for v in names] for r in rows])
    assert np.array_equal(table, expected, equal_nan=True)


@FAST
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     st.lists(st.lists(st.sampled_from(["file", "split", "size", "colour", "a.png", "train",
                                                        "1.5", "", "nan", "x", "../a", '"', "\n"]), max_size=5),
                              max_size=5).map(lambda rows: "\n".join(",".join(r) for r in rows).encode())))
def test_any_labels_csv_parses_or_fails_in_one_line(tmp_path, raw):
    (tmp_path / "labels.csv").write_bytes(raw)
    try:
        files, _, table = read_labels(tmp_path, GRAPH)
    except ValueError as err:
        assert "\n" not in str(err) and "labels.csv" in str(err)
    else:
        assert len(files) == len(table) and table.shape[1] == 2
        assert all(f.strip() and not f.startswith("/") and ".." not in f.split("/") for f in files)


GRAPH_NAMES = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), min_size=1, max_size=5, unique=True)


@FAST
@given(names=GRAPH_NAMES, data=st.data())
def test_graph_yaml_round_trips(tmp_path, names, data):
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]  # forward edges: always a DAG
    edges = data.draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []
    variables = [{"name": v, "normalization": {"mean": data.draw(st.floats(-9, 9)),
                                               "std": data.draw(st.floats(0.1, 9))}} for v in names]
    order = data.draw(st.permutations(list(range(len(names)))))
    spec = {"variables": [variables[i] for i in order], "edges": [list(e) for e in edges]}
    (tmp_path / "graph.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    graph = CausalGraph.from_yaml(tmp_path / "graph.yaml")
    assert graph.variables == [names[i] for i in order]
    assert CausalGraph.from_dict(graph.to_dict()) == graph
    topo = graph.topological_order()
    assert all(topo.index(a) < topo.index(b) for a, b in graph.edges)


YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=4),
              st.sampled_from(["a", "b", "name", "variables", "edges", "normalization", "mean", "std", "range"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(["name", "variables", "edges", "mean", "std",
                                                                       "range", "units", "a"]), st.integers(0, 2)),
                                            inner, max_size=3)),
    max_leaves=12)


@FAST
@given(value=st.one_of(YAML_VALUES, st.fixed_dictionaries({"variables": YAML_VALUES, "edges": YAML_VALUES})),
       raw=st.none() | st.binary(max_size=100))
def test_any_graph_yaml_loads_or_fails_in_one_line(tmp_path, value, raw):
    path = tmp_path / "graph.yaml"
    path.write_bytes(raw if raw is not None else yaml.safe_dump(value).encode())
    try:
        graph = CausalGraph.from_yaml(path)
    except ValueError as err:
        assert "\n" not in str(err), str(err)
    else:
        assert CausalGraph.from_dict(graph.to_dict()) == graph

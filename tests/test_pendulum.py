import math

import numpy as np
import pytest

from causaldiffae.data.pendulum import (
    GRAPH,
    VARIABLES,
    render,
    samples,
    shadow,
    true_counterfactual,
)

FIREBRICK = np.array([178, 34, 34])
ORANGE = np.array([255, 165, 0])


@pytest.fixture(scope="module")
def rows():
    return samples()


def _centroid_x(image: np.ndarray, colour: np.ndarray, tol: int = 40) -> float:
    mask = np.abs(image.astype(int) - colour).max(axis=-1) <= tol
    assert mask.sum() > 5, "colour not found in image"
    return float(np.nonzero(mask)[1].mean())


def test_samples_counts_split_and_names(rows):
    assert len(rows) == 7308
    splits = [r["split"] for r in rows]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (4934, 548, 1826)
    # counter rule: first test image is the 5th, then every 4th; the 10th reference-train image is val
    assert splits[:13] == ["train"] * 4 + ["test"] + ["train"] * 3 + ["test"] + ["train"] * 2 + ["val", "test"]
    assert len({r["file"] for r in rows}) == 7308
    assert all(set(r) == {"file", "split", *VARIABLES} for r in rows)


def test_samples_labels_exact_and_consistent(rows):
    (row,) = [r for r in rows if r["file"] == "a+10_l120.png"]
    assert row["angle"] == 10 * 9 / 10
    assert row["light"] == 120 * 9 / 10
    assert not any(r["light"] == 90.0 for r in rows)  # j = 100 (vertical rays) is excluded
    assert rows[0]["angle"] == -36.0 and rows[0]["light"] == 54.0
    for r in rows[::7]:
        assert (r["shadow_length"], r["shadow_position"]) == shadow(r["angle"], r["light"])


def test_shadow_hand_computed():
    # angle 0, light 45: cot(45) = 1. Pivot (10, 10.5): p1 = 10 + (-0.5 - 10.5) * 1 = -1.
    # Far end (10, 10.5 - 9.5) = (10, 1): p2 = 10 + (-0.5 - 1) * 1 = 8.5.
    # length = |p1 - p2| = 9.5, position = (-1 + 8.5) / 2 = 3.75.
    length, position = shadow(0.0, 45.0)
    assert length == pytest.approx(9.5)
    assert position == pytest.approx(3.75)
    # light 135: cot = -1, mirror image around x = 10.
    length, position = shadow(0.0, 135.0)
    assert length == pytest.approx(9.5)
    assert position == pytest.approx(16.25)


def test_shadow_floor():
    # vertical light on a hanging pendulum: the shadow collapses to a point, floored at 3.
    assert shadow(0.0, 90.0) == (3.0, pytest.approx(10.0))
    assert min(r["shadow_length"] for r in samples()) == 3.0


def test_shadow_rejects_bad_light():
    with pytest.raises(ValueError, match="light"):
        shadow(0.0, 180.0)
    with pytest.raises(ValueError, match="angle"):
        shadow(float("nan"), 60.0)


@pytest.mark.parametrize("size", [32, 64, 96])
def test_render_shape_dtype_white_corner(size):
    image = render(10.0, 60.0, size)
    assert image.shape == (size, size, 3)
    assert image.dtype == np.uint8
    assert (image[0, 0] == 255).all() and (image[-1, -1] == 255).all()
    assert (image < 128).any()  # something dark (rod / shadow) was drawn


def test_render_deterministic():
    assert render(12.3, 77.7).tobytes() == render(12.3, 77.7).tobytes()


def test_bob_follows_angle():
    pivot_column = 0.5125 * 96  # axes box centre: 0.125 + 0.775 / 2 of the width
    right = _centroid_x(render(30.0, 60.0), FIREBRICK)
    left = _centroid_x(render(-30.0, 60.0), FIREBRICK)
    hanging = _centroid_x(render(0.0, 60.0), FIREBRICK)
    assert right > pivot_column + 5
    assert left < pivot_column - 5
    assert abs(hanging - pivot_column) < 1.5


def test_sun_follows_light():
    # rays rising to the right (light < 90) put the sun right of the pivot, and vice versa
    low = _centroid_x(render(0.0, 60.0), ORANGE)
    high = _centroid_x(render(0.0, 120.0), ORANGE)
    assert low > 0.5125 * 96 > high


def test_shadow_override_only_changes_ground():
    base = render(20.0, 70.0)
    longer = render(20.0, 70.0, shadow_length=shadow(20.0, 70.0)[0] + 4.0)
    same = render(20.0, 70.0, shadow_length=shadow(20.0, 70.0)[0])
    assert same.tobytes() == base.tobytes()
    ground_row = round((0.89 - 0.77 * 0.5 / 22) * 96)  # y = -0.5 in pixel rows
    assert (base[: ground_row - 4] == longer[: ground_row - 4]).all()
    assert (base != longer).any()
    assert (longer[ground_row] < 128).all(axis=-1).sum() > (base[ground_row] < 128).all(axis=-1).sum()


def test_render_validation():
    with pytest.raises(ValueError, match="size"):
        render(0.0, 60.0, 4)
    with pytest.raises(ValueError, match="light"):
        render(0.0, float("inf"))
    with pytest.raises(ValueError, match="shadow_position"):
        render(0.0, 60.0, shadow_position=float("nan"))


def test_true_counterfactual_do_angle(rows):
    labels = rows[1234]
    image, new = true_counterfactual(labels, {"angle": 25.0}, size=64)
    length, position = shadow(25.0, labels["light"])
    assert new == {
        "angle": 25.0,
        "light": labels["light"],
        "shadow_length": length,
        "shadow_position": position,
    }
    assert image.tobytes() == render(25.0, labels["light"], 64).tobytes()


def test_true_counterfactual_do_shadow_length(rows):
    labels = rows[4321]
    image, new = true_counterfactual(labels, {"shadow_length": 5.0}, size=64)
    assert new["shadow_length"] == 5.0
    for name in ("angle", "light", "shadow_position"):
        assert new[name] == labels[name]
    expected = render(labels["angle"], labels["light"], 64, shadow_length=5.0)
    assert image.tobytes() == expected.tobytes()
    if not math.isclose(labels["shadow_length"], 5.0):
        assert image.tobytes() != render(labels["angle"], labels["light"], 64).tobytes()


def test_true_counterfactual_errors(rows):
    with pytest.raises(ValueError, match="colour") as info:
        true_counterfactual(rows[0], {"colour": 1.0})
    assert "shadow_position" in str(info.value)  # lists the valid names
    with pytest.raises(ValueError, match="light"):
        true_counterfactual({"angle": 0.0, "shadow_length": 3.0, "shadow_position": 10.0}, {})


def test_graph(rows):
    names = [v["name"] for v in GRAPH["variables"]]
    assert tuple(names) == VARIABLES
    assert sorted(map(tuple, GRAPH["edges"])) == sorted(
        (cause, effect) for cause in ("angle", "light") for effect in ("shadow_length", "shadow_position")
    )
    for variable in GRAPH["variables"]:
        lo, hi = variable["range"]
        values = [r[variable["name"]] for r in rows]
        assert lo <= min(values) and max(values) <= hi
        assert min(values) - lo < 1e-4 and hi - max(values) < 1e-4  # tight: rounded to 4 decimals
        assert variable["normalization"]["std"] > 0

"""Known answers worked out by hand: the objective's KL and label terms, DCI, KID and FID, and the evaluation
suite on a fake model whose counterfactuals differ from the factual image by a known amount.

The other tests check properties (non-negative, zero at identity); a wrong constant or a swapped argument keeps
those properties, so every number here is computed by hand in the comment next to its assertion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.counterfactual import Sweep
from causaldiffae.data.base import ImageDataset
from causaldiffae.graph import CausalGraph
from causaldiffae.metrics import dci, realism, suite
from causaldiffae.metrics.predictors import Predictors
from causaldiffae.metrics.settings import Settings
from causaldiffae.metrics.suite import evaluate
from causaldiffae.model import Latents

TOL = 1e-6
TINY = dict(latent_dim=2, encoder_channels=4, mechanism_hidden=4, unet_channels=8, channel_mult=(1,),
            attention_levels=(), num_timesteps=10)

# -- the objective (method.md section 3) ------------------------------------------------------------------------

# a: mean/std normalisation, ynorm = (y - 10) / 2; b: min/max, centre 2, half-width 2, ynorm = (y - 2) / 2
LOSS_GRAPH = {"variables": [{"name": "a", "normalization": {"mean": 10.0, "std": 2.0}},
                            {"name": "b", "normalization": {"min": 0.0, "max": 4.0}}],
              "edges": [["a", "b"]]}


def _loss_terms(monkeypatch: pytest.MonkeyPatch, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor,
                labels: torch.Tensor, **config: float) -> dict[str, torch.Tensor]:
    """model.loss with the encoder's output replaced by chosen (mu, logvar, z): the prior terms become known."""
    torch.manual_seed(0)
    model = CausalDiffAE(ModelConfig(graph=LOSS_GRAPH, image_size=8, channels=1, **TINY, **config))
    latents = Latents(mu, logvar, mu, z)
    monkeypatch.setattr(model, "_abduct", lambda x, sample=False, generator=None, labels=None: latents)
    return model.loss({"image": torch.full((mu.shape[0], 1, 8, 8), 0.5), "labels": labels}, gamma=0.5)


def test_kl_term_of_known_posteriors(monkeypatch):
    """KL(N(mu, e^logvar) || N(0, 1)) = 0.5 (mu^2 + e^logvar - 1 - logvar) per dim, summed over dims, mean over
    the batch; a sign slip anywhere changes one of the two images' values."""
    labels = torch.tensor([[10.0, 2.0], [10.0, 2.0]])
    zeros = torch.zeros(2, 2, 2)
    terms = _loss_terms(monkeypatch, zeros, zeros, zeros, labels)
    assert terms["kl"].item() == pytest.approx(0.0, abs=TOL)  # the prior itself: 0.5 (0 + 1 - 1 - 0) = 0

    mu = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])  # image 0: mu = 1, logvar = 0
    logvar = torch.stack([torch.zeros(2, 2), torch.full((2, 2), math.log(2.0))])  # image 1: mu = 0, var = 2
    terms = _loss_terms(monkeypatch, mu, logvar, zeros, labels, kl_weight=3.0, label_weight=0.0)
    # image 0: 0.5 (1 + 1 - 1 - 0) = 0.5 per dim, 4 dims -> 2
    # image 1: 0.5 (0 + 2 - 1 - ln 2) = 0.5 (1 - ln 2) per dim, 4 dims -> 2 (1 - ln 2)
    # mean over the batch: (2 + 2 - 2 ln 2) / 2 = 2 - ln 2 = 1.306853
    expected = 2 - math.log(2.0)
    assert terms["kl"].item() == pytest.approx(expected, rel=TOL)
    # L = mse + gamma * kl_weight * KL with gamma 0.5 and kl_weight 3 (label weight 0)
    assert terms["loss"].item() == pytest.approx(terms["mse"].item() + 0.5 * 3.0 * expected, rel=TOL)


def test_label_term_of_a_known_z(monkeypatch):
    """L_label = sum_i ||z_i - ynorm_i 1_d||^2 / (2 s^2) over present labels, mean over the batch; s = 0.5 makes
    1/(2 s^2) = 2 differ from 1/(2 s) = 1, 1/s^2 = 4 and 1/2."""
    labels = torch.tensor([[12.0, float("nan")],  # ynorm a = (12 - 10) / 2 = 1, b missing
                           [10.0, 3.0]])          # ynorm a = 0, b = (3 - 2) / 2 = 0.5
    z = torch.tensor([[[1.0, 3.0], [5.0, 5.0]],      # a: (1-1)^2 + (3-1)^2 = 4; b missing: 0     -> 4
                      [[0.0, 1.0], [0.5, -0.5]]])    # a: 0 + 1 = 1; b: 0 + (-0.5-0.5)^2 = 1      -> 2
    zeros = torch.zeros(2, 2, 2)
    terms = _loss_terms(monkeypatch, zeros, zeros, z, labels, prior_std=0.5, label_weight=2.0)
    # mean over the batch (4 + 2) / 2 = 3, times 1 / (2 * 0.5^2) = 2 -> 6
    assert terms["label"].item() == pytest.approx(6.0, rel=TOL)
    assert terms["kl"].item() == pytest.approx(0.0, abs=TOL)
    # L = mse + gamma * (kl_weight * 0 + label_weight * 6) = mse + 0.5 * 2 * 6
    assert terms["loss"].item() == pytest.approx(terms["mse"].item() + 6.0, rel=TOL)


# -- DCI (Eastwood & Williams 2018) -----------------------------------------------------------------------------

# 4 code dims x 3 factors: bases K = 3 (disentanglement) and D = 4 (completeness) differ from each other, from e
# and from 2, so an entropy in the wrong base changes both scores
IMPORTANCE = np.array([[1.0, 0.0, 0.0],
                       [1.0, 1.0, 1.0],
                       [0.0, 2.0, 2.0],
                       [0.0, 0.0, 3.0]])


def test_dci_disentanglement_by_hand():
    ln = math.log
    # rows: P = (1, 0, 0) -> 1 - H_3 = 1;  (1/3, 1/3, 1/3) -> 1 - 1 = 0;  (0, 1/2, 1/2) -> 1 - ln 2 / ln 3;
    # (0, 0, 1) -> 1; weights = row sums / total = (1, 3, 4, 3) / 11
    expected = (1 * 1 + 3 * 0 + 4 * (1 - ln(2) / ln(3)) + 3 * 1) / 11  # = 0.497844
    assert dci.disentanglement(IMPORTANCE) == pytest.approx(expected, rel=TOL)
    assert dci.disentanglement(np.eye(3)) == pytest.approx(1.0, rel=TOL)  # each code dim serves one factor
    assert dci.disentanglement(np.ones((2, 3))) == pytest.approx(0.0, abs=TOL)


def test_dci_completeness_by_hand():
    ln = math.log
    # columns over the D = 4 code dims, entropy in base 4:
    # (1/2, 1/2, 0, 0): H = ln 2 / ln 4 = 1/2                                     -> 1/2
    # (0, 1/3, 2/3, 0): H = (ln 3 - 2/3 ln 2) / ln 4                             -> 1 - that
    # (0, 1/6, 1/3, 1/2): H = (1/6 ln 6 + 1/3 ln 3 + 1/2 ln 2) / ln 4            -> 1 - that
    scores = [0.5, 1 - (ln(3) - 2 / 3 * ln(2)) / ln(4), 1 - (ln(6) / 6 + ln(3) / 3 + ln(2) / 2) / ln(4)]
    expected = sum(scores) / 3  # = 0.437093, the plain mean over factors
    assert dci.completeness(IMPORTANCE) == pytest.approx(expected, rel=TOL)
    assert dci.completeness(np.eye(3)) == pytest.approx(1.0, rel=TOL)
    assert dci.completeness(np.ones((3, 2))) == pytest.approx(0.0, abs=TOL)


def test_block_dci_sums_rows_before_scoring():
    # blocks of 2 code dims: rows (2, 1, 1) and (0, 2, 5); disentanglement weights 4/11 and 7/11, base 3
    ln = math.log
    blocked = dci.block_importance(IMPORTANCE, 2)
    assert blocked.tolist() == [[2.0, 1.0, 1.0], [0.0, 2.0, 5.0]]
    h0 = -(0.5 * ln(0.5) + 2 * 0.25 * ln(0.25)) / ln(3)
    h1 = -(2 / 7 * ln(2 / 7) + 5 / 7 * ln(5 / 7)) / ln(3)
    assert dci.disentanglement(blocked) == pytest.approx(4 / 11 * (1 - h0) + 7 / 11 * (1 - h1), rel=TOL)
    # completeness, base D = 2 (two blocks): columns (1, 0) -> 1; (1/3, 2/3) and (1/6, 5/6) -> 1 - H_2
    h_b = -(ln(1 / 3) / 3 + 2 / 3 * ln(2 / 3)) / ln(2)
    h_c = -(ln(1 / 6) / 6 + 5 / 6 * ln(5 / 6)) / ln(2)
    assert dci.completeness(blocked) == pytest.approx((1 + (1 - h_b) + (1 - h_c)) / 3, rel=TOL)


# -- realism: KID and FID -----------------------------------------------------------------------------------------


def test_kid_is_the_unbiased_mmd_by_hand():
    """The unbiased MMD^2 leaves the kernel's diagonal out: sum_{i != j} k / (m (m - 1)) within each set."""
    x, y = np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])
    # F = 1, k(x, y) = (x y + 1)^3
    # within x, off-diagonal: k(0, 1) = 1 -> 2 * 1 / (2 * 1) = 1
    # within y, off-diagonal: k(1, 2) = 27 -> 27
    # across: k(0, 1) + k(0, 2) + k(1, 1) + k(1, 2) = 1 + 1 + 8 + 27 = 37, mean 9.25
    # MMD^2_u = 1 + 27 - 2 * 9.25 = 9.5 (the biased V-statistic with the diagonal would give 31)
    assert realism._unbiased_mmd2(x, y) == pytest.approx(9.5, rel=TOL)
    mean, std = realism.kernel_inception_distance(x, y, subsets=3, subset_size=2)
    assert mean == pytest.approx(9.5, rel=TOL) and std == pytest.approx(0.0, abs=TOL)  # only permutations drawn

    x2, y2 = np.array([[1.0, 1.0], [1.0, -1.0]]), np.array([[0.0, 0.0], [2.0, 0.0]])
    # F = 2, k = (x.y / 2 + 1)^3; within x: x1.x2 = 0 -> 1; within y: y1.y2 = 0 -> 1
    # across: x.y = 0, 2, 0, 2 -> 1, 8, 1, 8, mean 4.5; MMD^2_u = 1 + 1 - 9 = -7 (unbiased: may be negative;
    # the biased one is (16 + 2) / 4 + (28 + 2) / 4 - 9 = 3)
    assert realism._unbiased_mmd2(x2, y2) == pytest.approx(-7.0, rel=TOL)
    mean, _ = realism.kernel_inception_distance(x2, y2, subsets=2, subset_size=5)
    assert mean == pytest.approx(-7.0, rel=TOL)


def test_fid_of_sets_with_known_moments():
    """Symmetric point sets have exact empirical moments: the diamond (+-1, 0), (0, +-1) has mean 0 and (with
    N - 1 = 3) covariance 2/3 I."""
    diamond = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    # scaled by 2 and moved by (3, 4): mean (3, 4), covariance 8/3 I
    # FID = |(3, 4)|^2 + tr(2/3 I + 8/3 I - 2 (16/9 I)^{1/2}) = 25 + 2 (10/3 - 8/3) = 25 + 4/3
    assert realism.frechet_distance(diamond, 2 * diamond + [3.0, 4.0]) == pytest.approx(25 + 4 / 3, rel=TOL)
    # stretched along x only: covariance diag(8/3, 2/3); FID = (sqrt(8/3) - sqrt(2/3))^2 + 0 = 2/3
    stretched = diamond * [2.0, 1.0]
    assert realism.frechet_distance(diamond, stretched) == pytest.approx(2 / 3, rel=TOL)
    assert realism.frechet_distance(diamond, diamond) == pytest.approx(0.0, abs=TOL)


# -- the suite on a model whose counterfactual is known ----------------------------------------------------------

SIZE = 8
SHIFT = 4.0  # levels (0-255) the fake model adds to every channel per unit of guidance
# channel i holds variable i (a, b) as its intensity level; channel 2 is a constant 50
SUITE_GRAPH = CausalGraph.from_dict({"variables": [{"name": "a", "normalization": {"mean": 40.0, "std": 8.0}},
                                                   {"name": "b", "normalization": {"mean": 120.0, "std": 2.0}}],
                                     "edges": [["a", "b"]]})
# a in steps of 10 and b in steps of 2 (|b - b'| <= 8): no factual-to-drawn difference equals 12, the one that
# would let reversibility against the counterfactual coincide with the right value
TEST_LABELS = [(20, 116), (30, 118), (40, 120), (50, 122), (60, 124), (30, 120)]
TRAIN_LABELS = [(20, 118), (40, 116), (60, 122), (50, 120), (30, 124), (40, 118)]


def _constant_images(labels: Sequence[tuple[int, int]]) -> torch.Tensor:
    """uint8 (N, 3, SIZE, SIZE): channel 0 = a, channel 1 = b, channel 2 = 50 levels everywhere."""
    levels = torch.tensor([[a, b, 50] for a, b in labels], dtype=torch.uint8)
    return levels[:, :, None, None].expand(-1, -1, SIZE, SIZE).contiguous()


def _fake_images(x: torch.Tensor, do: Mapping[str, object], guidance: float) -> torch.Tensor:
    """A perfect model plus a known error: do(v = value) sets v's channel to the value, then every channel
    gains SHIFT * guidance levels (no clipping: every level stays below 255)."""
    out = x.clone()
    for name, value in do.items():
        out[:, SUITE_GRAPH.index(name)] = torch.as_tensor(value, dtype=x.dtype).expand(len(x))[:, None, None] / 255
    return out + SHIFT * guidance / 255


class BrightnessPredictors(Predictors):
    """Predictors that read variable i as channel i's mean intensity in levels, and whose features are the
    per-channel mean intensities: readings known exactly for every image."""

    def __init__(self) -> None:
        super().__init__(SUITE_GRAPH, SIZE, 3, width=1)

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.check_images(x)
        return x.float().mean(dim=(2, 3))[:, :2] * 255

    def features(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.check_images(x)
        return x.float().mean(dim=(2, 3))


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list]:
    """The suite's results for the fake model, and (factual x, single do, multi do) of every main-pass batch."""
    labels = TEST_LABELS + TRAIN_LABELS
    splits = ["test"] * len(TEST_LABELS) + ["train"] * len(TRAIN_LABELS)
    root = Path(tmp_path_factory.mktemp("known"))
    data = ImageDataset(root, SUITE_GRAPH, [f"{i}.png" for i in range(len(labels))], splits,
                        _constant_images(labels), torch.tensor(labels, dtype=torch.float32))
    torch.manual_seed(0)
    model = CausalDiffAE(ModelConfig(graph=SUITE_GRAPH.to_dict(), image_size=SIZE, channels=3, **TINY)).eval()
    calls: list = []

    def fake_sweep(model, x, columns, *, reconstruct=False, **kwargs) -> Sweep:
        if len(columns) == 2:  # the main pass: (single, w), (multi, w); the guidance sweep has 2 * 3 columns
            calls.append((x.clone(), dict(columns[0][0]), dict(columns[1][0])))
        images = torch.stack([_fake_images(x, do, w) for do, w in columns])  # composition: do = {} -> SHIFT
        zeros = torch.zeros(len(columns), len(x), len(SUITE_GRAPH), 1)
        named = SUITE_GRAPH.named(zeros[..., 0])
        return Sweep(images, x, zeros[0], zeros, {k: v[0] for k, v in named.items()}, named,
                     x if reconstruct else None)

    settings = Settings(n=4, seeds=(0,), steps=2, guidance=1.0, batch_size=4, subset=2, cycles=10,
                        weights=(0.0, 1.0, 2.0), dci_samples=8, examples=1)  # w = 1: one SHIFT per counterfactual
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(suite, "sweep", fake_sweep)
        results = evaluate(model, data, BrightnessPredictors(), settings, progress=False)
    return results["seeds"][0], calls


def test_effectiveness_of_a_known_error(shifted):
    """Every counterfactual reads SHIFT = 4 levels off its intended value: MAE 4 raw, 4 / std normalised."""
    seed, _ = shifted
    for key in ("do(a)", "do(b)", "multi"):
        for name, std in (("a", 8.0), ("b", 2.0)):
            if key == "do(a)" and name == "b":
                assert "b" not in seed["effectiveness"][key]  # a descendant without a known SCM: not scored
                continue
            got = seed["effectiveness"][key][name]
            assert got["mae"] == pytest.approx(SHIFT, abs=1e-3), (key, name)
            assert got["mae_normalized"] == pytest.approx(SHIFT / std, abs=1e-3), (key, name)  # 0.5 and 2


def test_noop_floor_scores_the_factual_image(shifted):
    """The floor reads the factual image: 0 for the non-descendant a under do(b) (the counterfactual would
    read 4), and mean |factual - drawn| for an intervened variable (the values the fake sweep was asked for)."""
    seed, calls = shifted
    assert seed["noop_floor"]["do(b)"]["a"]["mae"] == pytest.approx(0.0, abs=1e-3)
    x, single, _ = calls[0]  # the batch of do(a)
    assert list(single) == ["a"]
    factual = x.mean(dim=(2, 3)) * 255  # (B, 3) levels: a, b, 50
    expected = (factual[:, 0] - single["a"]).abs().mean().item()
    assert expected > 5  # steps of 10 levels: far from the counterfactual's SHIFT
    assert seed["noop_floor"]["do(a)"]["a"]["mae"] == pytest.approx(expected, abs=1e-3)
    # multi: with two variables both are drawn; the floor joins the batches of both passes
    factual = torch.cat([c[0] for c in calls]).mean(dim=(2, 3)) * 255
    for i, name in enumerate(("a", "b")):
        drawn = torch.cat([c[2][name] for c in calls])
        expected = (factual[:, i] - drawn).abs().mean().item()
        assert seed["noop_floor"]["multi"][name]["mae"] == pytest.approx(expected, abs=1e-3), name
    # do(b) moves the non-descendant a's reading by SHIFT / std_a = 0.5 normalised units, the floor's by 0
    assert seed["minimality"]["do(b)"]["non_descendant_change"] == pytest.approx(SHIFT / 8.0, abs=1e-4)


def test_reversibility_is_measured_against_the_factual_image(shifted):
    """Undoing do(v) re-sets v's channel to its factual level and shifts again: v's channel ends SHIFT = 4 off
    the factual image, the two other channels 2 * SHIFT = 8 off: L1 = (4 + 8 + 8) / 3 (against the
    counterfactual the other channels would be 4 off and v's channel |factual - drawn|)."""
    seed, _ = shifted
    assert seed["reversibility_l1"] == pytest.approx((SHIFT + 2 * SHIFT + 2 * SHIFT) / 3, abs=1e-3)


def test_idempotence_measures_what_the_same_do_changes_again(shifted):
    """The same do(v) on the counterfactual re-sets v's channel to the same value + SHIFT (no change) and shifts
    the two other channels by SHIFT again: L1 to the counterfactual = (0 + 4 + 4) / 3."""
    seed, _ = shifted
    assert seed["idempotence_l1"] == pytest.approx(2 * SHIFT / 3, abs=1e-3)


def test_executed_share_is_the_made_change_over_the_asked_change(shifted):
    """The fake reads v at drawn + SHIFT: its change from the factual reading over the asked change is known per
    image; the share is their ratio of means."""
    seed, calls = shifted
    x, single, _ = calls[0]
    factual = x.mean(dim=(2, 3))[:, 0] * 255
    drawn = single["a"]
    expected = ((drawn + SHIFT - factual).abs().mean() / (drawn - factual).abs().mean()).item()
    assert seed["executed"]["do(a)"] == pytest.approx(expected, abs=1e-3)


def test_composition_accumulates_a_known_shift(shifted):
    """Each null intervention adds 4 levels to every channel: L1 after k cycles is 4 k (unclipped)."""
    seed, _ = shifted
    composition = seed["composition"]
    assert composition["l1_1"] == pytest.approx(SHIFT, abs=1e-3)
    assert composition["l1_10"] == pytest.approx(10 * SHIFT, abs=1e-3)
    assert composition["curve"] == pytest.approx([SHIFT * k for k in range(1, 11)], abs=1e-3)


def test_guidance_sweep_of_a_known_shift(shifted):
    """At weight w the fake is 4 w levels off: effectiveness (normalised MAE on the intervened variable, one
    image of do(a) and one of do(b)) = (4 w / 8 + 4 w / 2) / 2 = 1.25 w; null-intervention L1 = 4 w."""
    seed, _ = shifted
    for w in (0.0, 1.0, 2.0):
        point = seed["guidance_sweep"][f"w={w:g}"]
        assert point["effectiveness"] == pytest.approx(1.25 * w, abs=1e-3), w
        assert point["null_l1"] == pytest.approx(SHIFT * w, abs=1e-3), w


def test_realism_reference_is_the_train_split(shifted):
    """Realism compares with the train split (no image shared with the inputs): its channel means are the
    train labels' means, a (20 + 40 + 60 + 50 + 30 + 40) / 6 = 40, b 718 / 6 = 119.67, and 50 (the test split
    would give 38.33 and 120); the factual colour cast is the largest gap of the inputs' channel means to them."""
    seed, calls = shifted
    reference = [40.0, 718 / 6, 50.0]
    assert seed["realism"]["reference_images"] == len(TRAIN_LABELS)
    assert seed["realism"]["reference_channel_means"] == pytest.approx(reference, abs=1e-3)
    inputs = torch.cat([c[0] for c in calls]).double().mean(dim=(0, 2, 3)) * 255
    cast = (inputs - torch.tensor(reference, dtype=torch.float64)).abs().max().item()
    assert seed["realism"]["colour_cast_factual"] == pytest.approx(cast, abs=1e-3)
    # the counterfactuals: the intervened channel holds the drawn value, the others the factual one, all + 4
    levels = []
    for x, single, _ in calls:
        image = x.mean(dim=(2, 3)) * 255
        (name, value), = single.items()
        image[:, SUITE_GRAPH.index(name)] = value
        levels.append(image + SHIFT)
    cast = (torch.cat(levels).double().mean(dim=0) - torch.tensor(reference, dtype=torch.float64)).abs().max()
    assert seed["realism"]["colour_cast"] == pytest.approx(cast.item(), abs=1e-3)

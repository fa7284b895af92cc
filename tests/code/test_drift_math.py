"""The drift mathematics of `monitor.drift` on synthetic arrays, no model: each statistic against an
independent computation (scipy, a direct O(n²) MMD), the size-free scaling, the calibration and
the verdict (shifted windows alarm on the signal that moved, same-distribution windows do not)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon, pdist
from scipy.stats import chi2_contingency, ks_2samp

from monitor import drift
from monitor.drift import (
    SIGNALS,
    VERDICT_DRIFT,
    VERDICT_OK,
    Features,
    Scorer,
    calibrate,
    chi2_statistic,
    features,
    js_distance,
    ks_scale,
    ks_statistics,
    median_gamma,
    signal_level,
    verdict,
)
from visionops.imagestats import STAT_COLUMNS

CLASSES, DIM = 5, 8
BRIGHTNESS = STAT_COLUMNS.index("brightness")


def draw(rng: np.random.Generator, n: int, *, brightness: float = 0.0, emb_shift: float = 0.0,
         class_p: list[float] | None = None, conf_a: float = 8.0) -> Features:
    """n records of a synthetic production stream; each keyword moves one signal only."""
    stats = rng.normal(size=(n, len(STAT_COLUMNS)))
    stats[:, 0] = rng.integers(28, 33, size=n)  # image sizes: few distinct values, many ties
    stats[:, 2] = 3.0                           # channels: constant, D = 0
    stats[:, BRIGHTNESS] += brightness
    emb = rng.normal(size=(n, DIM)) + emb_shift
    cls = rng.choice(CLASSES, size=n, p=class_p)
    conf = rng.beta(conf_a, 2.0, size=n)
    return Features(stats, emb, cls, conf)


@pytest.fixture(scope="module")
def reference() -> Features:
    return draw(np.random.default_rng(0), 600)


@pytest.fixture(scope="module")
def calibration(reference) -> dict:
    return calibrate(Scorer(reference, CLASSES), window_size=100, splits=400, false_alarm_rate=0.05)


def direct_mmd2(x: np.ndarray, y: np.ndarray, gamma: float) -> float:
    """The unbiased MMD² written out term by term (Gretton et al. 2012, eq. 3)."""
    def k(u, v):
        return np.exp(-gamma * np.sum((u - v) ** 2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


# ---------------------------------------------------------------------------------------------
# Each statistic against an independent computation
# ---------------------------------------------------------------------------------------------

def test_ks_statistic_of_every_column_is_scipys_two_sample_d():
    rng = np.random.default_rng(1)
    a, b = draw(rng, 37).stats, draw(rng, 23, brightness=0.8).stats
    d = ks_statistics(a, b)
    expected = [ks_2samp(a[:, j], b[:, j]).statistic for j in range(a.shape[1])]
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-12)
    assert d[2] == 0.0  # a constant column cannot drift
    assert ks_scale(37, 23) == pytest.approx(np.sqrt(37 * 23 / 60))


def test_chi_square_is_scipys_statistic_of_homogeneity_without_continuity_correction():
    a, b = np.array([30, 0, 12, 7, 1]), np.array([10, 0, 25, 2, 9])  # an empty class is dropped
    nonempty = (a + b) > 0
    expected = chi2_contingency(np.stack([a, b])[:, nonempty], correction=False).statistic
    assert chi2_statistic(a, b) == pytest.approx(expected, rel=1e-12)
    assert chi2_statistic(a, 3 * a) == pytest.approx(0.0, abs=1e-12)  # same shares, other size
    assert chi2_statistic([5, 0], [9, 0]) == 0.0  # one class only: nothing to compare


def test_embedding_score_is_the_direct_unbiased_mmd2_scaled_by_nm_over_n_plus_m():
    rng = np.random.default_rng(2)
    ref, cur = draw(rng, 7), draw(rng, 5, emb_shift=0.5)
    gamma = 0.07
    score = Scorer(ref, CLASSES, gamma=gamma).score(cur)["embedding"]
    assert score == pytest.approx(direct_mmd2(ref.emb, cur.emb, gamma) * 7 * 5 / 12, rel=1e-9)


def test_median_heuristic_bandwidth_is_one_over_the_median_squared_distance():
    emb = np.random.default_rng(3).normal(size=(40, DIM))
    assert median_gamma(emb) == pytest.approx(1.0 / np.median(pdist(emb, "sqeuclidean")), rel=1e-9)
    # Duplicated rows (distance 0) do not pull the median down.
    doubled = np.concatenate([emb, emb])
    d = pdist(doubled, "sqeuclidean")
    assert median_gamma(doubled) == pytest.approx(1.0 / np.median(d[d > 0]), rel=1e-9)


def test_a_window_is_scored_with_each_statistic_and_unknown_classes_get_their_own_bin():
    rng = np.random.default_rng(4)
    ref, cur = draw(rng, 60), draw(rng, 30, brightness=0.5)
    cur.cls[:4] = CLASSES  # predictions of a label the reference's model did not have
    scores = Scorer(ref, CLASSES).score(cur)
    scale = np.sqrt(60 * 30 / 90)
    assert scores["image_stats"] == pytest.approx(
        scale * max(ks_2samp(ref.stats[:, j], cur.stats[:, j]).statistic for j in range(len(STAT_COLUMNS))))
    assert scores["confidence"] == pytest.approx(scale * ks_2samp(ref.conf, cur.conf).statistic)
    table = np.stack([np.bincount(ref.cls, minlength=CLASSES + 1), np.bincount(cur.cls, minlength=CLASSES + 1)])
    assert table[1, CLASSES] == 4
    assert scores["predicted_class"] == pytest.approx(
        chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False).statistic)


def test_js_distance_is_scipys_base_2_jensen_shannon():
    a, b = np.array([30, 0, 12, 7, 1]), np.array([10, 4, 25, 2, 0])
    assert js_distance(a, b) == pytest.approx(jensenshannon(a / a.sum(), b / b.sum(), base=2), rel=1e-9)


def test_features_map_an_unknown_label_to_the_extra_bin_and_name_missing_columns():
    row = {c: 1.0 for c in STAT_COLUMNS} | {"embedding": [0.0, 1.0], "top_score": 0.9}
    df = pd.DataFrame([row | {"predicted_label": "cat"}, row | {"predicted_label": "zebra"}])
    f = features(df, ["cat", "dog"])
    assert list(f.cls) == [0, 2] and f.emb.shape == (2, 2) and f.stats.shape == (2, len(STAT_COLUMNS))
    with pytest.raises(ValueError, match="top_score"):
        features(df.drop(columns="top_score"), ["cat", "dog"])


# ---------------------------------------------------------------------------------------------
# No-drift scores: the calibration's splits and the size-free scaling
# ---------------------------------------------------------------------------------------------

def test_null_splits_are_disjoint_and_their_fast_kernel_sums_equal_the_direct_ones(monkeypatch):
    ref = draw(np.random.default_rng(5), 50)
    ref.stats[:, 1] = np.arange(50)  # a record's identity, to check the two sides are disjoint
    scorer = Scorer(ref, CLASSES)
    seen = []
    original = drift.signal_scores

    def spy(a, b, n_classes, s_aa, s_bb, s_ab):
        seen.append((a, b, s_aa, s_bb, s_ab))
        return original(a, b, n_classes, s_aa, s_bb, s_ab)

    monkeypatch.setattr(drift, "signal_scores", spy)
    null, scheme = scorer.null_scores(window_size=10, splits=5, seed=0)
    assert scheme == "disjoint" and len(seen) == 5 and all(len(v) == 5 for v in null.values())
    for a, b, s_aa, s_bb, s_ab in seen:
        assert (len(a), len(b)) == (40, 10)
        assert not set(a.stats[:, 1]) & set(b.stats[:, 1])
        assert s_aa == pytest.approx(drift.rbf(a.emb, a.emb, scorer.gamma).sum(), rel=1e-9)
        assert s_bb == pytest.approx(drift.rbf(b.emb, b.emb, scorer.gamma).sum(), rel=1e-9)
        assert s_ab == pytest.approx(drift.rbf(a.emb, b.emb, scorer.gamma).sum(), rel=1e-9)
    # Too small a reference for two disjoint parts of the asked size: halves.
    seen.clear()
    _, scheme = scorer.null_scores(window_size=30, splits=3, seed=0)
    assert scheme == "halves" and all((len(a), len(b)) == (25, 25) for a, b, *_ in seen)


def test_no_drift_scores_of_small_and_large_windows_have_similar_quantiles():
    scorer = Scorer(draw(np.random.default_rng(6), 1000), CLASSES)
    small, _ = scorer.null_scores(window_size=30, splits=200, seed=1)
    large, _ = scorer.null_scores(window_size=480, splits=200, seed=2)
    for s in SIGNALS:
        q_small, q_large = np.quantile(small[s], 0.9), np.quantile(large[s], 0.9)
        # Unscaled, the KS statistics would differ by sqrt(480 * 520 / 1000) / sqrt(30 * 970 / 1000) = 2.9x
        # between these sizes and MMD² by 8.6x; the bounds leave room for the quantiles' sampling noise.
        assert 2 / 3 < q_small / q_large < 3 / 2, f"{s}: 90% quantile {q_small:.3g} (30 records) vs {q_large:.3g} (480)"


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

def test_signal_level_splits_the_false_alarm_rate_over_the_signals_only_with_bonferroni():
    assert signal_level(0.05, "bonferroni") == pytest.approx(0.05 / len(SIGNALS))
    assert signal_level(0.05, "none") == 0.05
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="false_alarm_rate"):
            signal_level(bad, "none")
    with pytest.raises(ValueError, match="bonferroni or none"):
        signal_level(0.05, "holm")


def test_calibration_rejects_too_few_splits_or_too_small_a_window(reference):
    scorer = Scorer(reference, CLASSES)
    with pytest.raises(ValueError, match="calibration_splits"):
        calibrate(scorer, window_size=100, splits=10, false_alarm_rate=0.05)
    with pytest.raises(ValueError, match="window_size"):
        calibrate(scorer, window_size=1, splits=50, false_alarm_rate=0.05)


def test_thresholds_do_not_rise_as_the_false_alarm_rate_rises(reference):
    scorer = Scorer(reference, CLASSES)
    rates = [0.01, 0.05, 0.1, 0.2, 0.4]
    cals = [calibrate(scorer, window_size=100, splits=50, false_alarm_rate=r, seed=3) for r in rates]
    for s in SIGNALS:
        thresholds = [c["signals"][s]["threshold"] for c in cals]
        assert all(hi >= lo for hi, lo in itertools.pairwise(thresholds)), f"{s}: {thresholds}"
        assert thresholds[0] > thresholds[-1], f"{s}: the threshold ignores the false-alarm rate"
    for r, c in zip(rates, cals):
        # Bonferroni bounds the union: on the calibration splits themselves, never above the target.
        assert c["in_sample_false_alarm_rate"] <= r
        assert c["correction"] == "bonferroni" and c["signal_level"] == pytest.approx(r / 4)


def test_bonferroni_thresholds_are_at_least_the_uncorrected_ones(reference):
    scorer = Scorer(reference, CLASSES)
    bonf = calibrate(scorer, window_size=100, splits=60, false_alarm_rate=0.2, correction="bonferroni", seed=4)
    none = calibrate(scorer, window_size=100, splits=60, false_alarm_rate=0.2, correction="none", seed=4)
    null, _ = scorer.null_scores(window_size=100, splits=60, seed=4)  # the splits both calibrated on
    for s in SIGNALS:
        assert bonf["signals"][s]["threshold"] >= none["signals"][s]["threshold"]
        # Uncorrected, each signal alone holds the rate on its own splits...
        assert np.mean(null[s] > none["signals"][s]["threshold"]) <= 0.2
    # ... but four of them together alarm more often than asked, which is what Bonferroni prevents.
    assert none["in_sample_false_alarm_rate"] > 0.2 >= bonf["in_sample_false_alarm_rate"]


# ---------------------------------------------------------------------------------------------
# Verdicts at the calibrated thresholds
# ---------------------------------------------------------------------------------------------

def test_same_distribution_windows_raise_no_alarm_beyond_the_calibrated_rate(reference, calibration):
    scorer, rng = Scorer(reference, CLASSES), np.random.default_rng(7)
    verdicts = [verdict(scorer.score(draw(rng, 100)), calibration) for _ in range(200)]
    rate = np.mean([v["drift_detected"] for v in verdicts])
    # 5% asked; 8% is two standard deviations of a 5% rate measured on 200 windows above it.
    assert rate <= 0.08, f"{rate:.1%} of same-distribution windows alarmed (target 5%)"
    assert calibration["check_false_alarm_rate"] <= 0.08
    # A window of the reference's own records is the least drifted window there is.
    same = verdict(scorer.score(reference.take(np.arange(100))), calibration)
    assert same["verdict"] == VERDICT_OK and not any(v["drifted"] for v in same["signals"].values())


@pytest.mark.parametrize("signal, shift", [
    ("image_stats", {"brightness": 1.0}),
    ("embedding", {"emb_shift": 0.5}),
    ("predicted_class", {"class_p": [0.6, 0.1, 0.1, 0.1, 0.1]}),
    ("confidence", {"conf_a": 4.0}),
])
def test_a_shifted_window_alarms_on_the_signal_that_moved(reference, calibration, signal, shift):
    scores = Scorer(reference, CLASSES).score(draw(np.random.default_rng(8), 100, **shift))
    v = verdict(scores, calibration)
    assert v["drift_detected"] and v["verdict"] == VERDICT_DRIFT
    assert [s for s in SIGNALS if v["signals"][s]["drifted"]] == [signal]
    assert v["signals"][signal]["ratio"] > 1


def test_a_score_equal_to_its_threshold_is_not_drift():
    cal = {"signals": {s: {"threshold": 2.0} for s in SIGNALS}}
    v = verdict(dict.fromkeys(SIGNALS, 2.0), cal)
    assert v["verdict"] == VERDICT_OK and all(x["ratio"] == 1.0 for x in v["signals"].values())
    v = verdict(dict.fromkeys(SIGNALS, 2.0) | {"confidence": 2.5}, cal)
    assert v["verdict"] == VERDICT_DRIFT and v["signals"]["confidence"]["ratio"] == 1.25
    # A signal whose no-drift scores were all 0 (a model that only ever predicted one class):
    # any score above 0 alarms, and there is no ratio to show.
    cal["signals"]["predicted_class"]["threshold"] = 0.0
    v = verdict(dict.fromkeys(SIGNALS, 0.0) | {"predicted_class": 3.0}, cal)
    assert v["signals"]["predicted_class"] == {**v["signals"]["predicted_class"], "drifted": True, "ratio": None}


def test_the_scorer_refuses_what_it_cannot_score_with_a_message(reference):
    with pytest.raises(ValueError, match="at least 4"):
        Scorer(reference.take(np.arange(3)), CLASSES)
    scorer = Scorer(reference, CLASSES)
    with pytest.raises(ValueError, match="at least 2"):
        scorer.score(reference.take(np.arange(1)))
    other = draw(np.random.default_rng(9), 10)
    other.emb = other.emb[:, :4]
    with pytest.raises(ValueError, match="monitor.reference"):
        scorer.score(other)

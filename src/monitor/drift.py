"""Drift scores and verdicts: the ONE definition of each signal, used by calibration and the job.

Four signals compare a window of production records with the reference (the champion's features
of the validation split, computed exactly as serving computes them):

- ``image_stats``: the largest scaled two-sample Kolmogorov-Smirnov statistic over the image
  statistics columns (width, height, channels, brightness, contrast, sharpness, saturation,
  channel means): ``sqrt(n*m/(n+m)) * D``.
- ``embedding``: the unbiased squared maximum mean discrepancy (RBF kernel, bandwidth fixed at
  calibration by the median heuristic on the reference) scaled by ``n*m/(n+m)``.
- ``predicted_class``: Pearson's chi-square statistic of homogeneity of the predicted-class counts.
- ``confidence``: the scaled KS statistic of the top-1 probability.

Every score is scaled so that its no-drift distribution hardly depends on the sample sizes
(the asymptotic Kolmogorov, weighted chi-square and chi-square laws): thresholds calibrated on
windows of `window_size` records hold for windows of other sizes. A signal has drifted when its
score is above its calibrated threshold; the window has drifted when any signal has.

numpy only (no Evidently, no torch): calibration runs the same functions hundreds of times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionops.errors import VisionopsError
from visionops.records import EMBEDDING, FEATURE_COLUMNS, LABEL, SCORE, STAT_COLUMNS

SIGNALS = ("image_stats", "embedding", "predicted_class", "confidence")
DESCRIPTIONS = {
    "image_stats": "image statistics (max scaled KS over columns)",
    "embedding": "embeddings (scaled MMD², RBF kernel)",
    "predicted_class": "predicted-class distribution (chi-square)",
    "confidence": "confidence, top-1 probability (scaled KS)",
}
VERDICT_DRIFT, VERDICT_OK, VERDICT_INSUFFICIENT = "drift detected", "no drift", "insufficient data"


class MonitorError(VisionopsError):
    """A monitoring job that cannot run: the message says why and what to do (exit code 2)."""


@dataclass
class Features:
    """A table of records as arrays: what the score functions take."""

    stats: np.ndarray  # (n, len(STAT_COLUMNS)) float64
    emb: np.ndarray    # (n, d) float64
    cls: np.ndarray    # (n,) int: index into labels, len(labels) for a label the model does not have
    conf: np.ndarray   # (n,) float64

    def __len__(self) -> int:
        return len(self.conf)

    def take(self, idx: np.ndarray) -> Features:
        return Features(self.stats[idx], self.emb[idx], self.cls[idx], self.conf[idx])


def features(df: Any, labels: Sequence[str]) -> Features:
    """pandas rows with FEATURE_COLUMNS -> Features. Raises ValueError naming missing columns."""
    missing = [c for c in FEATURE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"records lack the columns {missing}: not a visionops prediction log / reference")
    stats = df[list(STAT_COLUMNS)].to_numpy(dtype=np.float64)
    emb_list = [np.asarray(e, dtype=np.float64) for e in df[EMBEDDING]]
    dims = {e.shape for e in emb_list}
    if len(dims) > 1:
        raise ValueError(f"embeddings of different sizes in one table: {sorted(dims)}")
    emb = np.stack(emb_list) if emb_list else np.zeros((0, 0))
    index = {str(label): i for i, label in enumerate(labels)}
    cls = np.asarray([index.get(str(v), len(labels)) for v in df[LABEL]], dtype=np.int64)
    conf = df[SCORE].to_numpy(dtype=np.float64)
    return Features(stats, emb, cls, conf)


# ---------------------------------------------------------------------------------------------
# The score functions
# ---------------------------------------------------------------------------------------------

def ks_statistics(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sample KS statistic D of every column of a (n, k) and b (m, k): shape (k,)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    n, m = len(a), len(b)
    sa, sb = np.sort(a, axis=0), np.sort(b, axis=0)
    out = np.empty(a.shape[1])
    for j in range(a.shape[1]):
        grid = np.concatenate([sa[:, j], sb[:, j]])
        fa = np.searchsorted(sa[:, j], grid, side="right") / n
        fb = np.searchsorted(sb[:, j], grid, side="right") / m
        out[j] = np.abs(fa - fb).max()
    return out


def ks_scale(n: int, m: int) -> float:
    return float(np.sqrt(n * m / (n + m)))


def chi2_statistic(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """Pearson chi-square statistic of homogeneity of two count vectors (empty classes dropped)."""
    table = np.stack([np.asarray(counts_a, np.float64), np.asarray(counts_b, np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def js_distance(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two count vectors: for reading, not testing."""
    p = np.asarray(counts_a, np.float64) / max(1.0, float(np.sum(counts_a)))
    q = np.asarray(counts_b, np.float64) / max(1.0, float(np.sum(counts_b)))
    mix = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float((x[nz] * np.log2(x[nz] / mix[nz])).sum())

    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xx = np.einsum("ij,ij->i", x, x)[:, None]
    yy = np.einsum("ij,ij->i", y, y)[None, :]
    return np.maximum(xx + yy - 2.0 * (x @ y.T), 0.0)


def rbf(x: np.ndarray, y: np.ndarray, gamma: float) -> np.ndarray:
    return np.exp(-gamma * sq_dists(x, y))


def median_gamma(emb: np.ndarray, max_rows: int = 1000, seed: int = 0) -> float:
    """RBF gamma = 1 / median squared distance between reference embeddings (median heuristic)."""
    if len(emb) > max_rows:
        emb = emb[np.random.default_rng(seed).choice(len(emb), max_rows, replace=False)]
    i, j = np.triu_indices(len(emb), k=1)
    norms = np.einsum("ij,ij->i", emb, emb)
    d = sq_dists(emb, emb)[i, j]
    # Duplicated rows leave rounding noise in xx + yy - 2xy, not 0: noise is no distance.
    d = d[d > 1e-9 * (norms[i] + norms[j])]
    med = float(np.median(d)) if d.size else 1.0
    return 1.0 / med


def mmd_score(s_aa: float, s_bb: float, s_ab: float, n_a: int, n_b: int) -> float:
    """Scaled unbiased MMD² from kernel block sums (diagonals included; the RBF diagonal is 1)."""
    mmd2 = ((s_aa - n_a) / (n_a * (n_a - 1)) + (s_bb - n_b) / (n_b * (n_b - 1)) - 2.0 * s_ab / (n_a * n_b))
    return float(mmd2 * n_a * n_b / (n_a + n_b))


def signal_scores(a: Features, b: Features, n_classes: int, s_aa: float, s_bb: float, s_ab: float) -> dict[str, float]:
    """All four scores of sample b against sample a, given the embedding kernel's block sums."""
    n_a, n_b = len(a), len(b)
    scale = ks_scale(n_a, n_b)
    bins = n_classes + 1
    return {
        "image_stats": float(scale * ks_statistics(a.stats, b.stats).max()),
        "embedding": mmd_score(s_aa, s_bb, s_ab, n_a, n_b),
        "predicted_class": chi2_statistic(np.bincount(a.cls, minlength=bins), np.bincount(b.cls, minlength=bins)),
        "confidence": float(scale * ks_statistics(a.conf[:, None], b.conf[:, None])[0]),
    }


class Scorer:
    """The reference, ready to score windows against (and to be split for calibration)."""

    def __init__(self, ref: Features, n_classes: int, gamma: float | None = None):
        if len(ref) < 4:
            raise ValueError(f"the reference has {len(ref)} records: at least 4 are needed")
        self.ref = ref
        self.n_classes = n_classes
        self.gamma = float(gamma) if gamma else median_gamma(ref.emb)
        self._k_ref: np.ndarray | None = None

    @property
    def k_ref(self) -> np.ndarray:
        if self._k_ref is None:
            self._k_ref = rbf(self.ref.emb, self.ref.emb, self.gamma)
        return self._k_ref

    def score(self, cur: Features) -> dict[str, float]:
        """A production window against the whole reference."""
        if len(cur) < 2:
            raise ValueError("a window needs at least 2 records")
        if cur.emb.shape[1] != self.ref.emb.shape[1]:
            raise ValueError(f"the window's embeddings have {cur.emb.shape[1]} dimensions, the reference's "
                             f"{self.ref.emb.shape[1]}: rebuild the reference for this model (python -m monitor.reference)")
        s_aa = float(self.k_ref.sum())
        s_bb = float(rbf(cur.emb, cur.emb, self.gamma).sum())
        s_ab = float(rbf(self.ref.emb, cur.emb, self.gamma).sum())
        return signal_scores(self.ref, cur, self.n_classes, s_aa, s_bb, s_ab)

    def null_scores(self, window_size: int, splits: int, seed: int) -> tuple[dict[str, np.ndarray], str]:
        """Scores of `splits` random no-drift splits of the reference: a window of `window_size`
        records against the rest (disjoint; with replacement when the reference has fewer than
        2 x window_size records, the reference side then as large as the whole reference)."""
        n_ref = len(self.ref)
        rng = np.random.default_rng(seed)
        # A reference too small for two disjoint parts of the asked sizes is split in halves: the
        # scores are scaled to be size-free, and halves keep the two samples independent (a
        # bootstrap's repeated records shrink the KS statistics and under-state the null).
        scheme = "disjoint" if n_ref >= 2 * window_size else "halves"
        size = window_size if scheme == "disjoint" else n_ref // 2
        idx_a, idx_b = [], []
        for _ in range(splits):
            perm = rng.permutation(n_ref)
            idx_b.append(np.sort(perm[:size]))
            idx_a.append(np.sort(perm[size:]))
        # Kernel block sums of every split at once: quadratic forms of the count vectors.
        ca = np.stack([np.bincount(i, minlength=n_ref) for i in idx_a]).astype(np.float64)
        cb = np.stack([np.bincount(i, minlength=n_ref) for i in idx_b]).astype(np.float64)
        kcb = self.k_ref @ cb.T
        s_bb = np.einsum("sn,ns->s", cb, kcb)
        s_ab = np.einsum("sn,ns->s", ca, kcb)
        s_aa = np.einsum("sn,ns->s", ca, self.k_ref @ ca.T)
        out: dict[str, list[float]] = {s: [] for s in SIGNALS}
        for k in range(splits):
            scores = signal_scores(self.ref.take(idx_a[k]), self.ref.take(idx_b[k]), self.n_classes,
                                   float(s_aa[k]), float(s_bb[k]), float(s_ab[k]))
            for s in SIGNALS:
                out[s].append(scores[s])
        return {s: np.asarray(v) for s, v in out.items()}, scheme


# ---------------------------------------------------------------------------------------------
# Calibration and verdicts
# ---------------------------------------------------------------------------------------------

def signal_level(false_alarm_rate: float, correction: str) -> float:
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    if correction == "bonferroni":
        return false_alarm_rate / len(SIGNALS)
    if correction in ("none", None):
        return false_alarm_rate
    raise ValueError(f"correction must be bonferroni or none, got {correction!r}")


def calibrate(scorer: Scorer, window_size: int, splits: int, false_alarm_rate: float,
              correction: str = "bonferroni", seed: int = 0) -> dict[str, Any]:
    """Thresholds: the (1 - level) quantile of each signal's no-drift scores; plus the overall
    false-alarm rate those thresholds give on a second, independent set of no-drift splits."""
    if window_size < 2:
        raise ValueError(f"window_size must be at least 2, got {window_size}")
    if splits < 20:
        raise ValueError(f"calibration_splits must be at least 20, got {splits}")
    level = signal_level(false_alarm_rate, correction)
    null, scheme = scorer.null_scores(window_size, splits, seed)
    signals: dict[str, Any] = {}
    for s in SIGNALS:
        v = null[s]
        signals[s] = {
            "description": DESCRIPTIONS[s],
            "threshold": float(np.quantile(v, 1.0 - level, method="higher")),
            "null_median": float(np.median(v)), "null_p95": float(np.quantile(v, 0.95)),
            "null_max": float(v.max()),
        }
    check, _ = scorer.null_scores(window_size, splits, seed + 1)
    alarms = np.zeros(splits, dtype=bool)
    for s in SIGNALS:
        hit = check[s] > signals[s]["threshold"]
        signals[s]["check_false_alarm_rate"] = float(hit.mean())
        alarms |= hit
    return {
        "window_size": int(window_size), "splits": int(splits), "scheme": scheme, "seed": int(seed),
        "false_alarm_rate": float(false_alarm_rate), "correction": correction, "signal_level": level,
        "gamma": scorer.gamma, "reference_records": len(scorer.ref),
        "in_sample_false_alarm_rate": float(np.mean(np.any(
            [null[s] > signals[s]["threshold"] for s in SIGNALS], axis=0))),
        "check_false_alarm_rate": float(alarms.mean()),
        "signals": signals,
    }


def verdict(scores: dict[str, float], calibration: dict[str, Any]) -> dict[str, Any]:
    """Per-signal score, threshold, drifted; and the overall verdict."""
    signals = {}
    for s in SIGNALS:
        thr = float(calibration["signals"][s]["threshold"])
        signals[s] = {"score": round(float(scores[s]), 6), "threshold": round(thr, 6),
                      "ratio": round(float(scores[s]) / thr, 4) if thr > 0 else None,
                      "drifted": bool(scores[s] > thr), "description": DESCRIPTIONS[s]}
    drifted = any(v["drifted"] for v in signals.values())
    return {"drift_detected": drifted, "verdict": VERDICT_DRIFT if drifted else VERDICT_OK, "signals": signals}


def details(ref: Features, cur: Features, labels: Sequence[str]) -> dict[str, Any]:
    """What moved, for people: per-column KS, class shares, confidence means."""
    d = ks_statistics(ref.stats, cur.stats)
    scale = ks_scale(len(ref), len(cur))
    cols = {c: {"ks": round(float(d[i]), 6), "scaled_ks": round(float(scale * d[i]), 6),
                "reference_mean": round(float(ref.stats[:, i].mean()), 6),
                "current_mean": round(float(cur.stats[:, i].mean()), 6)} for i, c in enumerate(STAT_COLUMNS)}
    bins = len(labels) + 1
    ca, cb = np.bincount(ref.cls, minlength=bins), np.bincount(cur.cls, minlength=bins)
    names = [*map(str, labels), "(unknown)"]
    return {
        "image_stats": {"columns": cols, "most_drifted": STAT_COLUMNS[int(np.argmax(d))]},
        "predicted_class": {
            "js_distance": round(js_distance(ca, cb), 6),
            "reference_share": {n: round(float(c / max(1, ca.sum())), 4) for n, c in zip(names, ca) if c or n != "(unknown)"},
            "current_share": {n: round(float(c / max(1, cb.sum())), 4) for n, c in zip(names, cb) if c or n != "(unknown)"},
        },
        "confidence": {"reference_mean": round(float(ref.conf.mean()), 6), "current_mean": round(float(cur.conf.mean()), 6),
                       "ks": round(float(ks_statistics(ref.conf[:, None], cur.conf[:, None])[0]), 6)},
    }


def atypicality(ref: Features, cur: Features, gamma: float) -> np.ndarray:
    """Per record of `cur`: 1 - its mean RBF similarity to the reference embeddings (higher = more
    unlike the reference). Ranks the kept images shown in the drift email."""
    if len(cur) == 0:
        return np.zeros(0)
    return 1.0 - rbf(cur.emb, ref.emb, gamma).mean(axis=1)


# ---------------------------------------------------------------------------------------------
# Data quality
# ---------------------------------------------------------------------------------------------

QUALITY_FLAGS = ("tiny", "huge", "grayscale", "near_black", "blurred")


def quality_flags(df: Any, q: Any) -> Any:
    """Boolean columns per record (pandas DataFrame) from the logged image statistics."""
    import pandas as pd

    short = df[["width", "height"]].min(axis=1)
    long = df[["width", "height"]].max(axis=1)
    return pd.DataFrame({
        "tiny": short < float(q["tiny_px"]),
        "huge": long > float(q["huge_px"]),
        "grayscale": (df["channels"] == 1) | (df["saturation"] < float(q["gray_saturation"])),
        "near_black": df["brightness"] < float(q["dark_brightness"]),
        "blurred": df["sharpness"] < float(q["blur_sharpness"]),
    }, index=df.index)


def quality_shares(df: Any, q: Any) -> dict[str, float]:
    flags = quality_flags(df, q)
    return {k: round(float(flags[k].mean()) if len(flags) else 0.0, 4) for k in QUALITY_FLAGS}

"""Goodness-of-fit statistics for the distribution test (numpy and the standard library only).

Every statistic is a Pearson chi-square; its threshold is the chi-square quantile at
1 - ALPHA (exact for one and two degrees of freedom, else Wilson-Hilferty's approximation,
which errs high by at most 7%: slightly fewer failures, never more). With the check's fixed
seed the verdict repeats; ALPHA bounds how often a faithful transform could fail on a new
seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 1e-6
MIN_EXPECTED = 5.0  # cells expecting fewer samples are merged (Pearson's approximation)
MAX_CELLS = 50  # fewer, fuller cells: a bias spread over many classes adds up in each


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    df: int

    @property
    def threshold(self) -> float:
        return chi2_quantile(self.df)

    @property
    def passed(self) -> bool:
        return self.statistic <= self.threshold

    def __add__(self, other: ChiSquare) -> ChiSquare:
        return ChiSquare(self.statistic + other.statistic, self.df + other.df)


def chi2_quantile(df: int, alpha: float = ALPHA) -> float:
    """The chi-square quantile at 1 - alpha (0 for no degree of freedom: all must be exact)."""
    if df <= 0:
        return 0.0
    # only distribution tests need it: statistics pulls in decimal, fractions and random
    from statistics import NormalDist  # noqa: PLC0415

    if df == 1:  # exact: the square of a normal's two-sided quantile
        return NormalDist().inv_cdf(1 - alpha / 2) ** 2
    if df == 2:  # exact: an exponential with mean 2
        return -2 * math.log(alpha)
    z = NormalDist().inv_cdf(1 - alpha)
    k = 2 / (9 * df)
    return df * (1 - k + z * math.sqrt(k)) ** 3


def merge_cells(probs: np.ndarray, n: int) -> np.ndarray:
    """Cell index per category, merging neighbours until each expects MIN_EXPECTED samples
    and 1 / MAX_CELLS of the mass.

    Categories must already be ordered (by probability, or along the value axis). Those of
    probability 0 share one cell of their own: any sample there is impossible.
    """
    cells = np.zeros(probs.size, dtype=np.int64)
    k, mass = 0, 0.0
    least = max(MIN_EXPECTED / n, 1 / MAX_CELLS) if n else 1.0
    for i, q in enumerate(probs):
        if q == 0:
            continue
        if mass >= least:
            k, mass = k + 1, 0.0
        cells[i] = k
        mass += q
    live = probs > 0
    if mass * n < MIN_EXPECTED and k > 0:  # a tail expecting too few joins its neighbour
        cells[live & (cells == k)] = k - 1
        k -= 1
    cells[~live] = k + 1
    return cells


def goodness_of_fit(counts: np.ndarray, probs: np.ndarray) -> ChiSquare:
    """Observed counts per cell against exact cell probabilities (one multinomial sample)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    expected = n * np.asarray(probs, dtype=np.float64)
    impossible = (expected == 0) & (counts > 0)
    if impossible.any():
        return ChiSquare(math.inf, max(int((expected > 0).sum()) - 1, 0))
    live = expected > 0
    stat = float((((counts - expected) ** 2)[live] / expected[live]).sum())
    return ChiSquare(stat, int(live.sum()) - 1)


def homogeneity(a: np.ndarray, b: np.ndarray) -> ChiSquare:
    """Two samples' counts over the same cells: do they come from one distribution?"""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = a.sum(), b.sum()
    both = a + b
    live = both > 0
    if na == 0 or nb == 0 or live.sum() < 2:
        return ChiSquare(0.0, 0)
    ea, eb = both * na / (na + nb), both * nb / (na + nb)
    stat = (((a - ea) ** 2)[live] / ea[live]).sum() + (((b - eb) ** 2)[live] / eb[live]).sum()
    return ChiSquare(float(stat), int(live.sum()) - 1)


def bernoulli_fit(hits: np.ndarray, p: np.ndarray, trials: int, groups: int = 20) -> ChiSquare:
    """Per-element hit counts (out of `trials`) against per-element probabilities p.

    Elements are ordered by p and grouped so that each group's variance is about the same;
    a group's (hits - expected)^2 / variance adds one degree of freedom. Elements with p = 0
    or 1 must be exact.
    """
    hits, p = np.asarray(hits, dtype=np.float64), np.asarray(p, dtype=np.float64)
    sure = (p == 0) | (p == 1)
    if (hits[sure] != trials * p[sure]).any():
        return ChiSquare(math.inf, 1)
    hits, p = hits[~sure], p[~sure]
    var = trials * p * (1 - p)
    total = var.sum()
    if total <= 0:
        return ChiSquare(0.0, 0)
    k = int(max(1, min(groups, total // 10)))
    order = np.argsort(p, kind="stable")
    before = np.cumsum(var[order]) - var[order]
    which = np.minimum((before / total * k).astype(np.int64), k - 1)
    o = np.bincount(which, weights=hits[order], minlength=k)
    e = np.bincount(which, weights=trials * p[order], minlength=k)
    v = np.bincount(which, weights=var[order], minlength=k)
    live = v > 0
    return ChiSquare(float((((o - e) ** 2)[live] / v[live]).sum()), int(live.sum()))

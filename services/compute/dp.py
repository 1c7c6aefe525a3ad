"""Differential-privacy noise a provider's node adds to what it releases, with OpenDP's Laplace
mechanism (not a hand-written sampler).

The chain has already charged the job's ε to the consumer's budget on this listing
(services/consensus/privacy, inside ``jobs.Submit``); this node spends exactly that ε, read from
the same params by the same rule (services/common/privacy.py), on its own node.

Neighbouring datasets differ by one record of this provider (add or remove). A released quantity
is a vector whose L1 sensitivity to one record is stated by the caller; OpenDP builds the
mechanism, and its privacy map must confirm that the vector's sensitivity costs at most the ε
given, or nothing is released. OpenDP's "contrib" feature is enabled because the vector Laplace
measurement is in its contrib set (not yet vetted by its own process); the "floating-point"
feature is not needed, since no OpenDP transformation is used: the sums are computed by rdx, and
their sensitivity is stated from clamped bounds. What that leaves out: floating-point rounding
in rdx's own sums (not modelled, as in every float DP implementation without it) and the
fixed-point encoding of aggregation (2^-24), both far below the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def laplace(values: Sequence[float], sensitivity: float, epsilon: float) -> np.ndarray:
    """``values`` plus Laplace noise of scale sensitivity/ε, by OpenDP; the privacy map checked."""
    if not (epsilon > 0 and sensitivity > 0 and math.isfinite(epsilon) and math.isfinite(sensitivity)):
        raise ValueError("the sensitivity and ε of a release must be positive and finite")
    values = [float(v) for v in values]
    if not values:
        return np.zeros(0)
    dp = _opendp()
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
    meas = dp.m.make_laplace(*space, scale=sensitivity / epsilon)
    if meas.map(sensitivity) > epsilon * (1 + 1e-9):
        raise RuntimeError("OpenDP's privacy map exceeds the ε the chain charged")  # never with this scale
    return np.asarray(meas(values), dtype=np.float64)


def sensitivities(lo: float, hi: float) -> tuple[float, float]:
    """(of a sum, of a sum of squares) of values clamped to [lo, hi], for one record added or removed."""
    top = max(abs(lo), abs(hi))
    return max(top, 1e-12), max(top * top, 1e-12)

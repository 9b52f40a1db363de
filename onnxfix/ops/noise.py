"""The one standard-noise sampler: constant mode, `noise_feeds` and the check all draw here.

Uniforms are drawn in float64 and rounded to the target dtype, and rounding can reach 1.0
(float16: about 270 times per million), which U[0, 1) never gives: a Bernoulli with p = 1 would
then draw zeros. So uniforms are clamped to the largest value below 1 *in the target dtype*.
"""

from __future__ import annotations

import ml_dtypes  # onnx's own dependency: the bfloat16 dtype
import numpy as np

NORMAL = "normal"    # N(0, 1)
UNIFORM = "uniform"  # U[0, 1)
GUMBEL = "gumbel"    # standard Gumbel(0, 1): Multinomial's Gumbel-max form
FAMILIES = (NORMAL, UNIFORM, GUMBEL)  # every standard noise a noise input may hold
# The centre of each family: the noise an affine transform maps onto its mean / midpoint.
NOISE_CENTRE = {NORMAL: 0.0, UNIFORM: 0.5, GUMBEL: float(np.euler_gamma)}


def below_one(dtype: np.dtype) -> np.generic:
    """The largest value of `dtype` that is below 1."""
    dtype = np.dtype(dtype)
    try:
        epsneg = np.finfo(dtype).epsneg
    except ValueError:  # bfloat16 and other ml_dtypes types
        epsneg = ml_dtypes.finfo(dtype).epsneg
    return np.asarray(1 - epsneg, dtype=dtype)[()]


def standard_uniform(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """U[0, 1) in `dtype`: never 1.0, whatever the rounding."""
    dtype = np.dtype(dtype)
    u = np.asarray(rng.random(shape)).astype(dtype)
    return np.minimum(u, below_one(dtype))


def standard_noise(rng: np.random.Generator, family: str, shape, dtype) -> np.ndarray:
    """Standard noise of `family` (N(0, 1), U[0, 1) or Gumbel(0, 1)) in `dtype`, as an
    array (never a numpy scalar: onnxruntime refuses those for 0-d inputs)."""
    if family == NORMAL:
        return np.asarray(np.asarray(rng.standard_normal(shape)).astype(np.dtype(dtype)))
    if family == UNIFORM:
        return np.asarray(standard_uniform(rng, shape, dtype))
    if family == GUMBEL:  # drawn in float64, rounded once: every runtime adds the same values
        return np.asarray(np.asarray(rng.gumbel(size=shape)).astype(np.dtype(dtype)))
    raise ValueError(f"unknown noise family {family!r}")

"""cos(2 pi k / 2^24) in float64 without the Cos op, for the generator's float64 normals.

Why: IREE's llvm-cpu backend links no float64 `cos` ("undefined symbol: cos"; its float64 Log
and Sqrt link), and a float32 Cos would put float64 normals about 4e-7 off everywhere. The
angle is a 24-bit integer `k` (the draw's second word) in turns, so the range reduction is
exact: the quadrant q = k div 2^22 and the offset r = k mod 2^22 give
cos = [cos t, -sin t, -cos t, sin t][q] with t = 2 pi r / 2^24 in [0, pi / 2), and sin t is
cos(pi / 2 - t), the offset 2^22 - r; so one even Taylor polynomial on [0, pi / 2] serves
(11 terms: the next, t^22 / 22!, is below 2e-17). Measured over all 2^24 angles against a
long-double cos: at most 5.6e-16 off (numpy's cos(u2 * 2 pi): 4.4e-16; the two differ by at
most 9.0e-16).
Ops: Cast, Mul, Add, Sub (float64).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from onnxfix.graph.builder import NodeBuilder

QUARTER = 1 << 22  # a quarter turn in steps of 2^-24 turn
WORD_BITS = 12  # the generator's words (`algorithm.WORD_BITS`)
STEP = 2 * np.pi / (1 << 24)  # one step in radians (float64)
TERMS = 11
COEFFICIENTS = [(-1) ** i / math.factorial(2 * i) for i in range(TERMS)]


def cos_of_turns(b: NodeBuilder, high: str, low: str) -> str:
    """float64 cos(2 pi k / 2^24) for k = high * 2^12 + low, two int64 tensors of 12-bit
    words (the generator's, before they are joined).

    The range reduction is float64 arithmetic on integers below 2^24 (exact in float64, and
    in the float32 that OpenVINO and MNN compute float64 in), each floor a Cast to int64 and
    back (truncation, on values >= 0): integer ops on the generator's output words made tract
    0.23.9's optimizer run for 90 s and 1.5 GB (one Mul by 3), float ops do not."""
    high_f = _cast(b, high, onnx.TensorProto.DOUBLE, "cos_high")
    low_f = _cast(b, low, onnx.TensorProto.DOUBLE, "cos_low")
    in_high = QUARTER >> WORD_BITS  # a quarter turn in units of the high word
    q = _floor(b, _mul(b, high_f, 1.0 / in_high, "cos_q_f"), "cos_quadrant")
    r_high = b.op("Sub", [high_f, _mul(b, q, in_high, "cos_q_start")], "cos_r_hi")
    r = b.op("Add", [_mul(b, r_high, 1 << WORD_BITS, "cos_r_scaled"), low_f], "cos_offset")
    odd = _rem2(b, q, "cos_odd")
    # QUARTER - 2 r as -2 r + QUARTER (exact): before opset 7 only the second operand of an
    # Add or Sub may be broadcast, so a scalar never comes first
    mirrored = b.op("Add", [_mul(b, r, -2, "cos_r2"), _f64(b, QUARTER, "cos_quarter")],
                    "cos_flip")
    m = b.op("Add", [r, b.op("Mul", [odd, mirrored], "cos_flip_odd")], "cos_steps")
    # the sign: + for quadrants 0 and 3, - for 1 and 2: 1 - 2 (floor((q + 1) / 2) mod 2)
    q1 = b.op("Add", [q, _f64(b, 1.0, "cos_one")], "cos_q1")
    negative = _rem2(b, _floor(b, _mul(b, q1, 0.5, "cos_half_f"), "cos_half"), "cos_neg")
    sign = b.op("Add", [_mul(b, negative, -2, "cos_neg2"), _f64(b, 1.0, "cos_one")], "cos_sign")
    t = _mul(b, m, STEP, "cos_t")
    t2 = b.op("Mul", [t, t], "cos_t2")
    acc = _f64(b, COEFFICIENTS[-1], "cos_c")
    for i in range(TERMS - 2, -1, -1):  # Horner in t^2
        acc = b.op("Add", [b.op("Mul", [t2, acc], f"cos_h{i}"),
                           _f64(b, COEFFICIENTS[i], "cos_c")], f"cos_p{i}")
    return b.op("Mul", [acc, sign], "cos")


def _floor(b: NodeBuilder, x: str, hint: str) -> str:
    """floor(x) for float64 x >= 0 below 2^24: a Cast to int64 and back (no Floor: IREE takes
    it only from opset 13)."""
    return _cast(b, _cast(b, x, onnx.TensorProto.INT64, hint + "_int"),
                 onnx.TensorProto.DOUBLE, hint)


def _rem2(b: NodeBuilder, x: str, hint: str) -> str:
    """x mod 2 for an integer-valued float64 x >= 0."""
    half = _floor(b, _mul(b, x, 0.5, hint + "_h"), hint + "_q")
    return b.op("Sub", [x, _mul(b, half, 2, hint + "_qm")], hint)


def _mul(b: NodeBuilder, x: str, value: float, hint: str) -> str:
    return b.op("Mul", [x, _f64(b, value, hint + "_k")], hint)


def _cast(b: NodeBuilder, x: str, to: int, hint: str) -> str:
    return b.op("Cast", [x], hint, to=to)


def _f64(b: NodeBuilder, value: float, hint: str) -> str:
    return b.constant(np.array(value, dtype=np.float64), hint)


def reference(k: np.ndarray) -> np.ndarray:
    """The same computation in numpy (float64): what the graph gives on onnxruntime."""
    k = np.asarray(k, dtype=np.int64)
    q, r = k // QUARTER, k % QUARTER
    m = r + (q % 2) * (QUARTER - 2 * r)
    sign = 1 - 2 * (((q + 1) // 2) % 2)
    t = m.astype(np.float64) * STEP
    t2 = t * t
    acc = np.full(t.shape, COEFFICIENTS[-1])
    for c in COEFFICIENTS[-2::-1]:
        acc = acc * t2 + c
    return acc * sign.astype(np.float64)

"""Seeded mode's generator: a counter-based in-graph random generator (ONNX builder) and its
numpy reference, bit-identical in the uniforms (see `algorithm` for the design)."""

from onnxfix.seeded.algorithm import gumbel, node_key, normal, standard_noise, uniform
from onnxfix.seeded.graph import (
    MIN_OPSET,
    RANGE_OPSET,
    sbox_constant,
    seeded_gumbel,
    seeded_normal,
    seeded_uniform,
)

__all__ = ["MIN_OPSET", "RANGE_OPSET", "gumbel", "node_key", "normal", "sbox_constant",
           "seeded_gumbel", "seeded_normal", "seeded_uniform", "standard_noise", "uniform"]

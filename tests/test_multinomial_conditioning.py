"""The input-noise check conditions on whatever class onnxruntime's Multinomial draws.

A class whose float32 cdf interval is a few ulps wide is reproducible (the check
re-standardizes against the rewritten model's own cdf); one that rounds to an empty interval is
redrawn, a bounded number of times, and said so.
"""

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxfix import api
from onnxfix.check.compare import CheckSkipped
from onnxfix.check.conditional import REDRAWS, with_redraws
from onnxfix.check.draw_noise import UnlikelyDraw

WIDE = 2**21  # equal classes: each interval is 8 ulps wide where the cdf is above 1/2


def _uniform_multinomial(classes: int):
    node = helper.make_node("Multinomial", ["logits"], ["y"], sample_size=4,
                            dtype=TensorProto.INT64)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                    ["batch", classes])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_classes_a_few_ulps_wide_are_conditioned_on_not_skipped():
    # 2^21 equal classes: every class above the cdf's middle is 8 ulps wide, inside the
    # margin a draw re-standardized against numpy's cdf would keep; the draws are still
    # reproduced exactly, against the rewritten model's own cdf
    lines = []
    _, report = api.rewrite(_uniform_multinomial(WIDE), on_line=lines.append,
                            check_inputs={"logits": np.zeros((2, WIDE), np.float32)})
    assert report.parity.status == "passed", report.parity.reason
    draws = [c for c in report.parity.outputs if c.name == "y"]
    assert draws and all(c.passed and c.max_abs_err == 0 for c in draws)


def test_an_unreproducible_draw_is_redrawn_and_said_so():
    tries, notes = [], []

    def attempt():
        tries.append(1)
        if len(tries) < 3:
            raise UnlikelyDraw("cannot condition on the draw of Multinomial 'y': too improbable")
        return "conditioned"

    assert with_redraws(attempt, notes.append) == "conditioned"
    assert len(tries) == 3
    assert notes == ["NOTE | redrawn | cannot condition on the draw of Multinomial 'y': too "
                     "improbable; the original is run again"] * 2


def test_redraws_are_bounded_and_then_the_check_is_skipped():
    tries = []

    def attempt():
        tries.append(1)
        raise UnlikelyDraw("too improbable")

    with pytest.raises(CheckSkipped, match="too improbable"):
        with_redraws(attempt, lambda line: None)
    assert len(tries) == 1 + REDRAWS


def test_other_skips_are_not_retried():
    tries = []

    def attempt():
        tries.append(1)
        raise CheckSkipped("a draw inside a subgraph")

    with pytest.raises(CheckSkipped, match="subgraph"):
        with_redraws(attempt, lambda line: None)
    assert len(tries) == 1

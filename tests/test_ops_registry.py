"""The op registry: one class per op answers everything the passes and the check ask.

Adding an op is one module under onnxfix/ops/ plus its line in OP_TABLE; these tests fail
when a new class misses a member the code calls, or when a copy of the op list reappears.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxfix.ops import (
    OP_TABLE,
    RANDOM_OP_TYPES,
    AffineOp,
    BernoulliOp,
    DropoutOp,
    MultinomialOp,
    RandomOp,
    is_random_op,
    spec_for,
)

ROOT = Path(__file__).resolve().parent.parent
ABSTRACT = ("dtypes", "distribution", "transform_text", "transform", "forward", "standardize",
            "deterministic")


def _sources(*folders: str):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _is_spec(node: ast.expr) -> bool:
    """`spec`, `x.spec`, `spec_for(...)` or `OP_TABLE[...]`: an op class instance."""
    if isinstance(node, ast.Name):
        return node.id == "spec"
    if isinstance(node, ast.Attribute):
        return node.attr == "spec"
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "spec_for"
    if isinstance(node, ast.Subscript):
        return isinstance(node.value, ast.Name) and node.value.id == "OP_TABLE"
    return False




def members_called() -> set[str]:
    """Every member the package reads off an op class instance (outside ops/ itself)."""
    used = set()
    for path in _sources("onnxfix"):
        if path.parent.name == "ops":
            continue
        stack = [ast.parse(path.read_text())]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Attribute) and _is_spec(node.value):
                used.add(node.attr)
            stack.extend(ast.iter_child_nodes(node))
    return used


def test_the_scan_sees_the_members_the_passes_and_the_check_call():
    used = members_called()
    assert {"transform", "standardize_stacked", "deterministic_noise", "draw_axis",
            "ort_abort_reason", "reads_input"} <= used


@pytest.mark.parametrize("op_type", RANDOM_OP_TYPES)
def test_every_op_has_every_member_called_on_it(op_type: str):
    spec = OP_TABLE[op_type]
    missing = sorted(m for m in members_called() if not hasattr(spec, m))
    assert missing == []


@pytest.mark.parametrize("op_type", RANDOM_OP_TYPES)
def test_every_op_implements_the_abstract_members(op_type: str):
    cls = type(OP_TABLE[op_type])
    assert [m for m in ABSTRACT if getattr(cls, m) is getattr(RandomOp, m)] == []
    # a frozen draw needs its inverse; a re-standardization needs its own recondition
    for frozen_draw in ("standardize_frozen", "sample_draw"):
        assert (getattr(cls, frozen_draw) is not getattr(RandomOp, frozen_draw)) == \
            (not cls.data_dependent)
    assert (cls.recondition is not RandomOp.recondition) == \
        (cls.own_reference is not RandomOp.own_reference)
    assert (cls.provisional is not RandomOp.provisional) == \
        (cls.own_reference is not RandomOp.own_reference)
    # the op carries its own distribution test (the check has no table of them)
    assert cls.distribution_test is not RandomOp.distribution_test


def test_one_op_list_and_the_registry_agree():
    assert RANDOM_OP_TYPES == ("RandomNormal", "RandomNormalLike", "RandomUniform",
                               "RandomUniformLike", "Bernoulli", "Multinomial", "Dropout")
    assert all(OP_TABLE[t].op_type == t for t in RANDOM_OP_TYPES)
    node = helper.make_node("Bernoulli", ["p"], ["y"])
    assert is_random_op(node) and spec_for(node) is OP_TABLE["Bernoulli"]
    assert not is_random_op(helper.make_node("Bernoulli", ["p"], ["y"], domain="custom"))


def test_no_copy_of_the_op_list_anywhere():
    """A literal list, set or tuple naming every random op is a copy that will drift."""
    every = set(RANDOM_OP_TYPES)
    copies = []
    for path in _sources("onnxfix", "tests", "scripts"):
        if path == Path(__file__).resolve():  # the expectation above spells it out
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.List | ast.Set | ast.Tuple):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if every <= names:
                    copies.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert copies == []


def test_op_specific_answers():
    normal, uniform = OP_TABLE["RandomNormal"], OP_TABLE["RandomUniformLike"]
    assert [OP_TABLE[t].deterministic_noise for t in RANDOM_OP_TYPES] == [
        0.0, 0.0, 0.5, 0.5, 0.5, None, None]
    assert [OP_TABLE[t].reads_input for t in RANDOM_OP_TYPES] == [
        False, True, False, True, True, True, True]
    assert [OP_TABLE[t].discrete for t in RANDOM_OP_TYPES] == [
        False, False, False, False, True, True, True]
    multinomial = OP_TABLE["Multinomial"]
    assert [multinomial.draw_axis(k) for k in range(3)] == [0, 1, None]
    assert multinomial.source_axes(2) == [0, None]
    assert normal.source_axes(3) == [0, 1, 2] and uniform.draw_axis(2) == 2
    assert multinomial.noise_shape_from_output(
        helper.make_node("Multinomial", ["l"], ["y"]), lambda _n: [3, 5]) is None
    assert OP_TABLE["Dropout"].seed_attribute(7) == 7 and \
        isinstance(OP_TABLE["Dropout"].seed_attribute(7), int)
    assert normal.seed_attribute(7) == 7.0 and isinstance(normal.seed_attribute(7), float)
    assert isinstance(normal, AffineOp) and isinstance(OP_TABLE["Bernoulli"], BernoulliOp)
    assert isinstance(multinomial, MultinomialOp)


def test_dropout_exposes_its_mask_for_the_check():
    node = helper.make_node("Dropout", ["x", "r", "t"], ["y"])
    spec = OP_TABLE["Dropout"]
    assert isinstance(spec, DropoutOp)
    spec.expose_outputs(node, lambda hint: f"{hint}_1")
    assert list(node.output) == ["y", "y_mask_1"]
    spec.expose_outputs(node, lambda hint: "never")
    assert list(node.output) == ["y", "y_mask_1"]  # a named mask stays
    assert spec.output_type(node, 1, 13, TensorProto.FLOAT16) == TensorProto.BOOL
    assert spec.output_type(node, 1, 9, TensorProto.FLOAT16) == TensorProto.FLOAT16
    assert spec.output_type(node, 0, 13, TensorProto.FLOAT16) is None


@pytest.mark.parametrize("op_type, dist", [
    ("RandomNormal", {"family": "normal", "mean": 1.5, "scale": 0.25}),
    ("RandomUniformLike", {"family": "uniform", "low": -2.0, "high": 3.0}),
])
def test_a_frozen_draw_standardizes_back_to_noise_that_redraws_it(op_type: str, dist: dict):
    spec = OP_TABLE[op_type]
    attrs = {k: v for k, v in dist.items() if k != "family"}
    noise = spec.sample(np.random.default_rng(0), [64], TensorProto.FLOAT)
    draw = spec.forward(noise, attrs)[0]
    back = spec.standardize_frozen(draw, dist)
    np.testing.assert_array_equal(spec.forward(back, attrs)[0], draw)


def test_stacked_multinomial_draws_standardize_row_by_row():
    spec = OP_TABLE["Multinomial"]
    logits = np.log(np.array([[[0.2, 0.8], [0.9, 0.1]]] * 3, dtype=np.float32))  # [3, 2, 2]
    picks = np.array([[[1, 1, 0], [0, 0, 1]]] * 3, dtype=np.int64)  # [3 loops, 2 rows, 3]
    u = spec.standardize_stacked({0: picks}, {}, {0: logits}, np.float32, lead=1)
    assert u.shape == (3, 2, 3) and u.dtype == np.float32
    flat = spec.standardize({0: picks[0]}, {}, {0: logits[0]}, np.float32)
    np.testing.assert_array_equal(u[1], flat)


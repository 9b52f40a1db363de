"""Hand-made legal edge-case graphs for the issue-14 fixtures (onnx.parser / onnx.helper only).

Each builder returns a model that passes `onnx.checker.check_model(full_check=True)`; GRAPHS maps
the fixture name to (builder, what it exercises).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import TensorProto, helper

# The IR version onnx's own helpers pair with each opset (old toolchains read these files).
IR_FOR_OPSET = {6: 3, 7: 3, 8: 3, 9: 4, 10: 5, 11: 6, 13: 7, 15: 8, 17: 8}


def _parse(opset: int, text: str) -> onnx.ModelProto:
    header = f'<ir_version: {IR_FOR_OPSET[opset]}, opset_import: ["" : {opset}]>\n'
    return onnx.parser.parse_model(header + text)


def loop_varying_draw() -> onnx.ModelProto:
    """A Loop whose per-iteration draw doubles in length: 1, 2, 4 elements (y has 8)."""
    return _parse(17, """
    agraph (float[1] x) => (float[?] y) {
      trip = Constant<value = int64 {3}>()
      cond = Constant<value = bool {1}>()
      y = Loop(trip, cond, x) <body = body (int64 i, bool c, float[?] v)
                                            => (bool c_out, float[?] v_out) {
        eps = RandomNormalLike(v)
        w = Add(v, eps)
        one = Constant<value = float {1}>()
        w1 = Add(w, one)
        v_out = Concat<axis = 0>(w, w1)
        c_out = Identity(c)
      }>
    }""")


def if_in_scan() -> onnx.ModelProto:
    """A Scan over rows whose body holds an If; the then-branch draws RandomNormalLike."""
    return _parse(17, """
    agraph (float[3] acc0, float[T, 3] xs) => (float[3] acc, float[T, 3] ys) {
      acc, ys = Scan(acc0, xs) <num_scan_inputs = 1, body = body (float[3] a, float[3] x_t)
                                                       => (float[3] a_out, float[3] y_t) {
        s = ReduceSum<keepdims = 0>(x_t)
        zero = Constant<value = float {0}>()
        c = Greater(s, zero)
        y_t = If(c) <then_branch = then_g () => (float[3] noisy) {
                        eps = RandomNormalLike(x_t)
                        noisy = Add(x_t, eps)
                      }, else_branch = else_g () => (float[3] plain) {
                        plain = Identity(x_t)
                      }>
        a_out = Add(a, y_t)
      }>
    }""")


def dropout_in_loop() -> onnx.ModelProto:
    """Training-mode Dropout (ratio 0.5) inside a Loop body; masks leave as scan outputs."""
    return _parse(13, """
    agraph (float[2, 4] x) => (float[2, 4] acc, float[3, 2, 4] each) {
      trip = Constant<value = int64 {3}>()
      cond = Constant<value = bool {1}>()
      acc, each = Loop(trip, cond, x) <body = body (int64 i, bool c, float[2, 4] a)
                                               => (bool c_out, float[2, 4] a_out, float[2, 4] d) {
        ratio = Constant<value = float {0.5}>()
        train = Constant<value = bool {1}>()
        d, mask = Dropout(x, ratio, train)
        a_out = Add(a, d)
        c_out = Identity(c)
      }>
    }""")


def dropout_opset6_is_test0() -> onnx.ModelProto:
    """Opset-6 Dropout with is_test=0 (training): its mask output is float, like the data."""
    return _parse(6, """
    agraph (float[2, 5] x) => (float[2, 5] y, float[2, 5] mask) {
      y, mask = Dropout<is_test = 0, ratio = 0.3>(x)
    }""")


def nan_outputs() -> onnx.ModelProto:
    """Outputs holding NaN in the same positions in every run: Log of negative inputs, and a
    constant NaN multiplied into the draw."""
    return _parse(17, """
    agraph (float[2, 4] x) => (float[2, 4] y, float[2, 4] z) {
      eps = RandomNormalLike(x)
      l = Log(x)
      y = Add(l, eps)
      c = Constant<value = float[4] {nan, 1, 2, 3}>()
      z = Mul(eps, c)
    }""")


def uniform_0d_paddle() -> onnx.ModelProto:
    """paddle2onnx-style `paddle.uniform([])`: RandomUniform with shape=[] (a 0-d draw)."""
    draw = helper.make_node("RandomUniform", [], ["u"], name="p2o.RandomUniform.0", dtype=1,
                            low=-1.0, high=1.0)
    draw.attribute.append(helper.make_attribute("shape", [], attr_type=onnx.AttributeProto.INTS))
    scale = helper.make_node("Mul", ["x", "u"], ["y"], name="p2o.Mul.0")
    graph = helper.make_graph(
        [draw, scale], "paddle_uniform_0d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6,
                             producer_name="paddle2onnx-style")


def dropout_ratio_input() -> onnx.ModelProto:
    """Training-mode Dropout whose ratio is a graph input (a float scalar the caller feeds)."""
    return _parse(13, """
    agraph (float[batch, 4] x, float ratio) => (float[batch, 4] y) {
      train = Constant<value = bool {1}>()
      y = Dropout(x, ratio, train)
    }""")


def dead_draw() -> onnx.ModelProto:
    """A draw nobody reads (RandomNormalLike 'unused') beside a live RandomUniformLike."""
    return _parse(17, """
    agraph (float[batch, 4] x) => (float[batch, 4] y) {
      unused = RandomNormalLike(x)
      u = RandomUniformLike(x)
      y = Add(x, u)
    }""")


def loop_trip_from_timesteps() -> onnx.ModelProto:
    """A sampler Loop whose trip count is Shape(timesteps)[0] (dim `steps`), a draw per step."""
    return _parse(17, """
    agraph (float[steps] timesteps, float[batch, 4] x) => (float[batch, 4] y) {
      sh = Shape(timesteps)
      zero = Constant<value = int64 {0}>()
      trip = Gather<axis = 0>(sh, zero)
      cond = Constant<value = bool {1}>()
      y = Loop(trip, cond, x) <body = body (int64 i, bool c, float[batch, 4] v)
                                            => (bool c_out, float[batch, 4] v_out) {
        t = Gather<axis = 0>(timesteps, i)
        eps = RandomNormalLike(v)
        scaled = Mul(eps, t)
        half = Constant<value = float {0.9}>()
        kept = Mul(v, half)
        v_out = Add(kept, scaled)
        c_out = Identity(c)
      }>
    }""")


def function_randn_like() -> onnx.ModelProto:
    """A RandomNormalLike inside a model-local function `local.Noisy`, called twice."""
    return onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    agraph (float[batch, 4] x) => (float[batch, 4] y) {
      a = local.Noisy(x)
      y = local.Noisy(a)
    }
    <domain: "local", opset_import: ["" : 17]>
    Noisy (inp) => (out) {
      eps = RandomNormalLike(inp)
      half = Constant<value = float {0.5}>()
      scaled = Mul(eps, half)
      out = Add(inp, scaled)
    }""")


def _old(opset: int, op: str, attrs: str, inputs: str, out_type: str = "float[2, 3]"):
    def build() -> onnx.ModelProto:
        return _parse(opset, f"""
        agraph (float[2, 3] x) => ({out_type} y) {{
          y = {op}{attrs}({inputs})
        }}""")
    return build


def _old_additive(opset: int, op: str, attrs: str, inputs: str):
    # onnxruntime has no kernel for Add before opset 7; Sum-6 it has.
    combine = "Sum" if opset < 7 else "Add"

    def build() -> onnx.ModelProto:
        return _parse(opset, f"""
        agraph (float[2, 3] x) => (float[2, 3] y) {{
          d = {op}{attrs}({inputs})
          y = {combine}(x, d)
        }}""")
    return build


GRAPHS: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "loop_varying_draw": (loop_varying_draw,
                          "a Loop whose per-iteration draw shape changes (1, 2, 4)"),
    "if_in_scan": (if_in_scan, "an If inside a Scan body, RandomNormalLike in the then-branch"),
    "dropout_in_loop": (dropout_in_loop, "training Dropout inside a Loop body"),
    "dropout_opset6_is_test0": (dropout_opset6_is_test0,
                                "opset-6 Dropout is_test=0: a float mask output"),
    "nan_outputs": (nan_outputs, "outputs with NaN in the same positions as the original's"),
    "uniform_0d_paddle": (uniform_0d_paddle,
                          "paddle2onnx-style RandomUniform with shape=[] (0-d noise)"),
    "dropout_ratio_input": (dropout_ratio_input, "a Dropout whose ratio is a graph input"),
    "dead_draw": (dead_draw, "a dead draw (no consumer) beside a live one"),
    "loop_trip_from_timesteps": (loop_trip_from_timesteps,
                                 "a Loop whose trip count is Shape(timesteps)[0]"),
    "function_randn_like": (function_randn_like,
                            "RandomNormalLike inside a model-local function, called twice"),
    "old_random_normal_op6": (_old_additive(6, "RandomNormal",
                                            "<shape = [2, 3], mean = 1.0, scale = 2.0>", ""),
                              "RandomNormal at opset 6"),
    "old_random_uniform_like_op7": (_old_additive(7, "RandomUniformLike",
                                                  "<low = -1.0, high = 3.0>", "x"),
                                    "RandomUniformLike at opset 7"),
    "old_random_normal_like_op8": (_old_additive(8, "RandomNormalLike", "<scale = 0.5>", "x"),
                                   "RandomNormalLike at opset 8"),
    "old_random_uniform_op9": (_old_additive(9, "RandomUniform", "<shape = [2, 3]>", ""),
                               "RandomUniform at opset 9"),
    "old_multinomial_op7": (_old(7, "Multinomial", "<sample_size = 3>", "x", "int32[2, 3]"),
                            "Multinomial at opset 7 (int32 samples)"),
    "old_multinomial_op10": (_old(10, "Multinomial", "<sample_size = 3, dtype = 7>", "x",
                                  "int64[2, 3]"),
                             "Multinomial at opset 10 (int64 samples)"),
    "old_dropout_op6_mask": (_old(6, "Dropout", "<is_test = 0, ratio = 0.5>", "x"),
                             "opset-6 training Dropout, data output only"),
}

"""Seeded draws inside Scan bodies (issue 13): a Scan body reads nothing from outer scope that
the generator added. OpenVINO 2026.4's Scan converter refuses a body that reads an outer value
("Number of Scan node inputs (3) is less than required (4) based on body graph parameters"),
which ONNX allows; so the seed, the S-box and the pass numbers of enclosing loops reach a
Scan body as Scan state variables carried unchanged (the pass counter is one already), at any
nesting. Loop and If bodies keep reading outer values (OpenVINO converts those)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, parse, run

import onnxfix
from onnxfix.seeded import algorithm as alg
from onnxfix.seeded.metadata import seed_metadata

SCAN_IN_SCAN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 2] xs) => (float[2] total, float[2, 3, 2] ys) {
  zero = Constant<value = float[2] {0, 0}>()
  total, ys = Scan<num_scan_inputs = 1, body = outer (float[2] s, float[3, 2] rows) =>
                                                      (float[2] s1, float[3, 2] rows1) {
      z = Constant<value = float[2] {0, 0}>()
      inner_s, rows1 = Scan<num_scan_inputs = 1, body = inner (float[2] t, float[2] row) =>
                                                               (float[2] t1, float[2] row1) {
          r = RandomUniformLike(row)
          row1 = Add(row, r)
          t1 = Add(t, row1)
      }> (z, rows)
      s1 = Add(s, inner_s)
  }> (zero, xs)
}"""

SCAN_IN_IF_IN_SCAN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3, 2] xs) => (float[2] total, float[3, 2] ys) {
  zero = Constant<value = float[2] {0, 0}>()
  total, ys = Scan<num_scan_inputs = 1, body = outer (float[2] s, float[2] x) =>
                                                      (float[2] s1, float[2] y) {
      sum = ReduceSum<keepdims = 0>(x)
      z = Constant<value = float {0}>()
      c = Greater(sum, z)
      y = If(c) <then_branch = then_g () => (float[2] y_then) {
          zz = Constant<value = float[2] {0, 0}>()
          rows = Constant<value = float[4, 2] {1, 2, 3, 4, 5, 6, 7, 8}>()
          acc, stacked = Scan<num_scan_inputs = 1, body = inner (float[2] t, float[2] row) =>
                                                                 (float[2] t1, float[2] row1) {
              r = RandomNormalLike(row)
              row1 = Add(row, r)
              t1 = Add(t, row1)
          }> (zz, rows)
          y_then = Add(x, acc)
      }, else_branch = else_g () => (float[2] y_else) {
          y_else = Identity(x)
      }>
      s1 = Add(s, y)
  }> (zero, xs)
}"""

# a Loop in a Scan, two draws of other kinds in the same Scan body (they share its states)
LOOP_IN_SCAN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3, 2] xs) => (float[2] total, float[3, 2] ys, float[3, 2] ps) {
  zero = Constant<value = float[2] {0, 0}>()
  total, ys, ps = Scan<num_scan_inputs = 1, body = outer (float[2] s, float[2] x) =>
                                                          (float[2] s1, float[2] y, float[2] p) {
      n = Constant<value = int64 {2}>()
      t = Constant<value = bool {1}>()
      y = Loop(n, t, x) <body = lb (int64 i, bool c, float[2] a) => (bool c1, float[2] a1) {
          c1 = Identity(c)
          r = RandomUniformLike(a)
          a1 = Add(a, r)
      }>
      half = Constant<value = float[2] {0.5, 0.5}>()
      p = Bernoulli(half)
      q = RandomNormal<shape = [2], dtype = 11>()
      qf = Cast<to = 1>(q)
      s1 = Add(s, qf)
  }> (zero, xs)
}"""

SCAN_IN_LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64 n, float[3, 2] xs) => (float[3, 2] y) {
  t = Constant<value = bool {1}>()
  y = Loop(n, t, xs) <body = outer (int64 i, bool c, float[3, 2] a) =>
                                   (bool c1, float[3, 2] a1) {
      c1 = Identity(c)
      zero = Constant<value = float[2] {0, 0}>()
      acc, a1 = Scan<num_scan_inputs = 1, body = inner (float[2] s, float[2] row) =>
                                                         (float[2] s1, float[2] row1) {
          r = RandomNormalLike(row)
          row1 = Add(row, r)
          s1 = Add(s, row1)
      }> (zero, a)
  }>
}"""



# several seeded sites of each op and dtype, in the main graph and in If, Loop and Scan bodies
MANY_SITES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 3] x, double[batch, 3] xd, float[batch, 3] p, double[2] pd, float[batch, 4] logits,
   bool flag, int64 n, float[2, 3] xs)
  => (float[2, 3] a, double[2, 3] b, float16[2, 3] c, float[2, 3] d, double[2, 3] e,
      float16[2, 3] f, float[batch, 3] g1, float[batch, 3] g2, double[batch, 3] g3,
      float[batch, 3] h, double[2] h2, int32[batch, 5] m, float[batch, 3] dr, bool[batch, 3] dm,
      float[3] wif, float[3] wloop, float[3] sacc, float[2, 3] sys) {
  a = RandomNormal<shape = [2, 3]>()
  b = RandomNormal<shape = [2, 3], dtype = 11, mean = 1.0>()
  c = RandomNormal<shape = [2, 3], dtype = 10>()
  d = RandomUniform<shape = [2, 3]>()
  e = RandomUniform<shape = [2, 3], dtype = 11>()
  f = RandomUniform<shape = [2, 3], dtype = 10>()
  g1 = RandomNormalLike(x)
  g2 = RandomUniformLike(x)
  g3 = RandomUniformLike(xd)
  h = Bernoulli(p)
  h2 = Bernoulli(pd)
  m = Multinomial<sample_size = 5>(logits)
  ratio = Constant<value = float {0.25}>()
  train = Constant<value = bool {1}>()
  dr, dm = Dropout(x, ratio, train)
  wif = If(flag) <then_branch = t () => (float[3] y1) {
      y1 = RandomUniform<shape = [3]>()
  }, else_branch = e2 () => (float[3] y2) {
      y2 = RandomNormal<shape = [3], dtype = 1>()
  }>
  go = Constant<value = bool {1}>()
  init = Constant<value = float[3] {0, 0, 0}>()
  wloop = Loop(n, go, init) <body = lb (int64 i, bool cin, float[3] acc) =>
                                       (bool cout, float[3] acc2) {
      cout = Identity(cin)
      r = RandomNormalLike(acc)
      acc2 = Add(acc, r)
  }>
  sacc, sys = Scan<num_scan_inputs = 1, body = sb (float[3] s, float[3] row) =>
                                                   (float[3] s1, float[3] row1) {
      half = Constant<value = float[3] {0.5, 0.5, 0.5}>()
      coin = Bernoulli(half)
      u = RandomUniformLike(row)
      row1 = Add(coin, u)
      s1 = Add(s, row1)
  }> (init, xs)
}"""


MODELS = {"edge/if_in_scan": None, "scan_in_scan": SCAN_IN_SCAN,
          "scan_in_if_in_scan": SCAN_IN_IF_IN_SCAN, "loop_in_scan": LOOP_IN_SCAN,
          "scan_in_loop": SCAN_IN_LOOP, "many_sites": MANY_SITES}


def _model(name: str) -> onnx.ModelProto:
    text = MODELS[name]
    return onnx.load(FIXTURES / f"{name}.onnx") if text is None else parse(text)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def _nodes(graph: onnx.GraphProto):
    """Every node of `graph` and of its subgraphs, in document order."""
    for node in graph.node:
        yield node
        for body in _subgraphs(node):
            yield from _nodes(body)


def _outer_reads(body: onnx.GraphProto) -> set[str]:
    """The names a body (with its own subgraphs) reads from outside it."""
    defined = {i.name for i in body.input} | {t.name for t in body.initializer}
    read = {o.name for o in body.output}
    for node in _nodes(body):
        defined.update(node.output)
        read.update(node.input)
        for inner in _subgraphs(node):
            defined.update(i.name for i in inner.input)
            defined.update(t.name for t in inner.initializer)
    return read - defined - {""}


def _scan_outer_reads(model: onnx.ModelProto) -> list[set[str]]:
    return [_outer_reads(next(a.g for a in n.attribute if a.name == "body"))
            for n in _nodes(model.graph) if n.op_type == "Scan"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_scan_body_reads_no_outer_value_the_generator_added(name):
    model = _model(name)
    seeded, report = onnxfix.rewrite(model, "seeded")
    assert report.parity.status == "passed", report.parity.reason
    assert _scan_outer_reads(seeded) == _scan_outer_reads(model)


def test_the_states_of_a_scan_are_its_pass_counter_the_seed_and_the_sbox():
    seeded, _ = onnxfix.rewrite(FIXTURES / "edge" / "if_in_scan.onnx", "seeded", check=False)
    scan = next(n for n in seeded.graph.node if n.op_type == "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    assert list(scan.input) == ["acc0", "onnxfix_scan_pass_start", "seed",
                                "onnxfix_seeded_sbox", "xs"]
    assert [i.name for i in body.input] == ["a", "onnxfix_scan_pass", "onnxfix_scan_seed",
                                            "onnxfix_scan_sbox", "x_t"]
    carried = {n.output[0]: list(n.input) for n in body.node if n.op_type == "Identity"}
    assert carried == {"onnxfix_scan_seed_next": ["onnxfix_scan_seed"],
                       "onnxfix_scan_sbox_next": ["onnxfix_scan_sbox"]}
    assert [o.name for o in body.output] == ["a_out", "onnxfix_scan_pass_next",
                                             "onnxfix_scan_seed_next", "onnxfix_scan_sbox_next",
                                             "y_t"]
    assert len(scan.output) == len(scan.input)  # one state out per state in, one scan output


def test_draws_in_one_scan_body_share_its_carried_states():
    seeded, report = onnxfix.rewrite(parse(LOOP_IN_SCAN), "seeded", check=False)
    assert len(seed_metadata(seeded)["draws"]) == 3
    scan = next(n for n in seeded.graph.node if n.op_type == "Scan")
    assert len(scan.input) == 2 + 3  # its state and scan input, the pass counter, seed, S-box


def test_a_draw_in_a_scan_in_a_scan_is_the_reference_stream_of_both_passes():
    seeded, _ = onnxfix.rewrite(parse(SCAN_IN_SCAN), "seeded", check=False)
    key = seed_metadata(seeded)["draws"][0]["key"]
    xs = np.zeros([2, 3, 2], dtype=np.float32)
    got = run(seeded, {"xs": xs, "seed": np.array(11)})["ys"]
    want = np.stack([np.stack([alg.uniform(11, key, [2], iteration=(i, j)) for j in range(3)])
                     for i in range(2)])
    np.testing.assert_array_equal(got, want)


# -- no dead generator nodes ----------------------------------------------------------------

def _dead_outputs(model: onnx.ModelProto, original: onnx.ModelProto) -> list[str]:
    """Outputs of nodes the rewrite added that no node reads and that are no graph output."""
    kept = {n.name for n in _nodes(original.graph)}
    read = {o.name for o in model.graph.output}
    for node in _nodes(model.graph):
        read.update(node.input)
        for body in _subgraphs(node):
            read.update(o.name for o in body.output)
    return [f"{node.op_type} -> {out}" for node in _nodes(model.graph) if node.name not in kept
            for out in node.output if out and out not in read]


@pytest.mark.parametrize("multinomial", ["inverse-cdf", "gumbel"])
def test_no_node_the_generator_added_is_dead(multinomial):
    """A float32 uniform reads only the first number of the last Feistel round: the word
    of the second number (its Gather, Add and floor mod) was computed and never read."""
    model = parse(MANY_SITES)
    seeded, report = onnxfix.rewrite(model, "seeded", multinomial=multinomial)
    assert report.parity.status == "passed", report.parity.reason
    assert len(seed_metadata(seeded)["draws"]) == 18
    assert _dead_outputs(seeded, model) == []

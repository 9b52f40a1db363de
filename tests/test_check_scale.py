"""Issue 10, the check side: the work per random node of the checked rewrite (plan and parity
check) does not grow with the number of random nodes (counted in calls and scans, not timed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
from conftest import parse
from conftest import run as run_model

import onnxfix
from onnxfix.check import compare
from onnxfix.check.capture_model import capture_model, inlined
from onnxfix.check.compare import compare_arrays
from onnxfix.check.parity import check_parity
from onnxfix.graph.find import Site, find_sites
from onnxfix.passes.plan import site_path


def _draws(count: int):
    """`count` RandomNormalLike draws, each added to the running value."""
    lines, prev = [], "x"
    for i in range(count):
        out = "y" if i == count - 1 else f"h{i}"
        lines += [f"  e{i} = RandomNormalLike <scale = 0.01> ({prev})",
                  f"  {out} = Add({prev}, e{i})"]
        prev = out
    body = "\n".join(lines)
    return parse(f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {{
{body}
}}
""")


def _inputs_read(monkeypatch, count: int) -> tuple[int, str]:
    """How often the check reads its sessions' input lists, and its verdict."""
    calls = []
    real = ort.InferenceSession.get_inputs

    def counted(self):
        calls.append(self)
        return real(self)

    model = _draws(count)
    new, report = onnxfix.rewrite(model, check=False)
    monkeypatch.setattr(ort.InferenceSession, "get_inputs", counted)
    parity = check_parity(model, new, report.nodes, "input-noise")
    monkeypatch.undo()
    return len(calls), parity.status


def test_the_check_reads_each_sessions_inputs_a_fixed_number_of_times(monkeypatch):
    few, few_status = _inputs_read(monkeypatch, 2)
    many, many_status = _inputs_read(monkeypatch, 40)
    assert (few_status, many_status) == ("passed", "passed")
    # each lookup of a noise input used to rescan the session's inputs: 4 per draw and size
    assert many == few


NESTED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y) {
  a = Relu(x)
  y = If(c) <then_branch = t () => (float[2] ty) {
      n = Neg(a)
      r = RandomNormalLike(n)
      ty = Add(n, r)
  }, else_branch = e () => (float[2] ey) {
      u = RandomUniformLike(a)
      ey = Add(a, u)
  }>
}
"""


class _CountedNodes(list):
    """A node list that counts the scans made over it."""

    scans = 0

    def __iter__(self):
        type(self).scans += 1
        return super().__iter__()


def test_find_sites_records_where_each_node_and_scope_owner_sits():
    sites = find_sites(parse(NESTED))
    assert [s.op_type for s in sites] == ["RandomNormalLike", "RandomUniformLike"]
    for s in sites:
        assert s.container.node[s.index] is s.node
        for scope in s.scopes:
            assert scope.parent.node[scope.owner_index] is scope.owner
    assert [(s.index, [sc.owner_index for sc in s.scopes]) for s in sites] == [(1, [1]),
                                                                                 (0, [1])]


def test_a_site_path_reads_the_recorded_position_and_scans_only_when_it_is_stale():
    model = _draws(3)
    nodes = _CountedNodes(model.graph.node)
    graph = SimpleNamespace(node=nodes)
    site = find_sites(model)[2]
    assert site_path(Site(site.node, graph, "main", [], site.index)) == (4,)
    assert _CountedNodes.scans == 0
    # a stale position (the graph changed since): found by a scan, not trusted
    assert site_path(Site(site.node, graph, "main", [], 0)) == (4,)
    assert _CountedNodes.scans == 1


def _verdict(check):
    return (check.max_abs_err, check.max_rel_err, check.passed, check.note)


def test_a_comparison_made_in_chunks_gives_the_whole_arrays_verdict(monkeypatch):
    rng = np.random.default_rng(3)
    want = rng.standard_normal((5, 7)).astype(np.float32)
    cases = {"equal": want.copy(), "last element off": want.copy(),
             "nan moved": want.copy(), "inf sign": want.copy(), "first off": want.copy()}
    cases["last element off"][4, 6] += 0.5
    cases["nan moved"][3, 1] = np.nan
    cases["inf sign"][2, 2] = np.inf
    cases["first off"][0, 0] *= 1.001
    whole = {k: _verdict(compare_arrays("y", g, want, None, None, {}))
             for k, g in cases.items()}
    monkeypatch.setattr(compare, "COMPARE_CHUNK", 4)  # 35 elements: 9 chunks, the last short
    chunked = {k: _verdict(compare_arrays("y", g, want, None, None, {}))
               for k, g in cases.items()}
    assert chunked == whole
    assert [v[2] for v in whole.values()] == [True, False, False, False, False]
    assert whole["last element off"][0] == np.float32(want[4, 6] + 0.5) - want[4, 6]
    assert whole["nan moved"][3] == "NaN/Inf positions differ"


def test_identical_arrays_skip_the_measurement_with_the_same_verdict():
    same = np.array([[0.0, -0.0, np.nan], [np.inf, -np.inf, 1.5]], np.float32)
    check = compare_arrays("y", same, same.copy(), None, None, {})
    with np.errstate(invalid="ignore"):  # inf - inf, as in the check
        measured = compare._float_errors(same, same.copy(), 1e-5, 1e-5)
    # what the measurement itself finds on the same pair
    assert measured == (0.0, 0.0, True, True)
    assert _verdict(check) == (0.0, 0.0, True, "")
    # a negative tolerance passes nothing, even an exact match: the measurement decides
    assert not compare_arrays("y", same[1:, 2:], same[1:, 2:], -1.0, 0.0, {}).passed


def test_the_check_copies_the_original_only_when_it_has_functions_to_inline():
    model = _draws(2)
    assert inlined(model) is model  # read only: the check's models are copies made from it
    with_function = parse("""
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[2] x) => (float[2] y) {
  y = local.noisy(x)
}
<domain: "local", opset_import: ["" : 17]>
noisy (a) => (b) {
  r = RandomNormalLike(a)
  b = Add(a, r)
}
""")
    base = inlined(with_function)
    assert base is not with_function and len(with_function.functions) == 1
    assert [n.op_type for n in base.graph.node] == ["RandomNormalLike", "Add"]


def test_main_graph_draws_leave_the_capture_model_as_themselves():
    model = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] p) => (float[2, 4] y) {
  a = Bernoulli(p)
  q = Sigmoid(a)
  b = Bernoulli(q)
  c = Bernoulli(q)
  s = Add(a, b)
  y = Add(s, c)
}
""")
    _, report = onnxfix.rewrite(model, check=False)
    captures, capture, _ = capture_model(model, report.nodes)
    assert [c.outputs for c in captures] == [{0: "a"}, {0: "b"}, {0: "c"}]
    # a tensor a node makes leaves as itself, once; the graph input p through an Identity
    sources = [c.inputs[0] for c in captures]
    assert sources[1:] == ["q", "q"] and sources[0] != "p"
    assert [n.op_type for n in capture.graph.node if n.op_type == "Identity"] == ["Identity"]
    assert sorted(o.name for o in capture.graph.output) == sorted(
        ["y", "a", "b", "c", "q", sources[0]])
    p = np.full((2, 4), 0.5, np.float32)
    got = run_model(capture, {"p": p})
    np.testing.assert_array_equal(got[sources[0]], p)
    np.testing.assert_array_equal(got["y"], got["a"] + got["b"] + got["c"])


def _draw_jobs(spec, attrs: dict, dtype, shapes, rng) -> list[tuple]:
    """standardize jobs for draws of `spec` made as the op makes them (offset + factor * eps,
    rounded to the draw's dtype, so many need `_refine`'s nudges)."""
    offset, factor = spec.offset_factor(attrs)
    jobs = []
    for shape in shapes:
        eps = rng.standard_normal(shape) if spec.family == "normal" else rng.random(shape)
        draw = np.asarray(offset + factor * eps).astype(dtype)
        jobs.append(({0: draw}, attrs, {}, np.dtype(dtype), 0))
    return jobs


def test_draws_standardized_together_get_the_bits_each_gets_alone():
    from onnxfix.ops import affine  # noqa: PLC0415

    rng = np.random.default_rng(7)
    normal, uniform = affine.OPS[1], affine.OPS[2]
    shapes = [(2, 16), (), (0,), (3,), (affine.BATCH_ELEMENTS + 5,), (4, 4)]
    jobs = {normal: [], uniform: []}
    for dtype in (np.float16, np.float32, np.float64):
        for attrs in ({"scale": 0.01}, {"mean": 3.0, "scale": 0.37}, {"scale": 0.0}):
            jobs[normal] += _draw_jobs(normal, attrs, dtype, shapes, rng)
        for attrs in ({"low": -2.0, "high": 5.0}, {}):
            jobs[uniform] += _draw_jobs(uniform, attrs, dtype, shapes, rng)
    for spec, todo in jobs.items():
        together = spec.standardize_all(todo)
        alone = [spec.standardize_stacked(*job) for job in todo]
        assert len(together) == len(alone) == len(todo)
        for got, want in zip(together, alone, strict=True):
            assert (got.shape, got.dtype, got.tobytes()) == (want.shape, want.dtype,
                                                             want.tobytes())
    # the nudges were exercised: rounding left some standardized draws off by an ulp
    refined = [job for job in jobs[normal] if job[0][0].dtype == np.float16]
    plain = [((job[0][0].astype(np.float64) - normal.offset_factor(job[1])[0])
              / normal.offset_factor(job[1])[1]).astype(np.float16)
             for job in refined if normal.offset_factor(job[1])[1]]
    assert any(not np.array_equal(p, s) for p, s in
               zip(plain, normal.standardize_all([j for j in refined
                                                  if normal.offset_factor(j[1])[1]]),
                   strict=True))


def test_the_check_standardizes_its_draws_in_calls_that_do_not_grow_with_them(monkeypatch):
    from onnxfix.ops.affine import AffineOp  # noqa: PLC0415

    def calls(count: int) -> tuple[int, str]:
        made = []
        real = AffineOp.standardize

        def counted(self, *a, **k):
            made.append(1)
            return real(self, *a, **k)

        model = _draws(count)
        new, report = onnxfix.rewrite(model, check=False)
        monkeypatch.setattr(AffineOp, "standardize", counted)
        parity = check_parity(model, new, report.nodes, "input-noise")
        monkeypatch.undo()
        return len(made), parity.status

    # one call per check size (batch 2 and 3), however many draws: it was one per draw
    assert calls(2) == calls(40) == (2, "passed")


def test_arrays_equal_but_not_byte_for_byte_still_skip_the_measurement():
    a = np.array([0.0, np.nan, 1.5], np.float32)
    b = np.array([-0.0, np.nan, 1.5], np.float32)
    b.view(np.uint32)[1] |= 1  # another NaN payload
    assert a.tobytes() != b.tobytes()
    assert _verdict(compare_arrays("y", a, b, None, None, {})) == (0.0, 0.0, True, "")
    b[2] = 1.25
    assert not compare_arrays("y", a, b, None, None, {}).passed


def test_a_draw_whose_dtype_the_rewrite_changed_is_compared_not_refused_at_load():
    """The probe is typed from the original's facts; one the rewritten model contradicts is
    built again from its own inference, so the verdict names the dtype, as it always did."""
    model = _draws(1)
    new, report = onnxfix.rewrite(model, check=False)
    maker = next(n for n in new.graph.node if "e0" in n.output)
    maker.output[0] = "e0_f"
    readers = [n for n in new.graph.node if "e0" in n.input]
    for node in readers:
        node.input[list(node.input).index("e0")] = "e0_back"
    nodes = list(new.graph.node)
    at = nodes.index(maker) + 1
    nodes[at:at] = [
        onnx.helper.make_node("Cast", ["e0_f"], ["e0"], to=onnx.TensorProto.DOUBLE),
        onnx.helper.make_node("Cast", ["e0"], ["e0_back"], to=onnx.TensorProto.FLOAT)]
    del new.graph.node[:]
    new.graph.node.extend(nodes)
    onnx.checker.check_model(new, full_check=True)
    parity = check_parity(model, new, report.nodes, "input-noise")
    assert parity.status == "failed"
    notes = {c.note for c in parity.outputs if not c.passed}
    assert notes == {"dtype float64 != expected float32"}


def test_a_batch_that_raises_is_done_again_draw_by_draw(monkeypatch):
    """Whatever a batched standardize raises, the draws are standardized one by one, where
    a failing draw is met after the checks of the draws before it (as before batching)."""
    from onnxfix.ops.affine import AffineOp  # noqa: PLC0415

    def broken(self, jobs):
        raise ValueError("not this way")

    model = _draws(3)
    new, report = onnxfix.rewrite(model, check=False)
    monkeypatch.setattr(AffineOp, "standardize_all", broken)
    parity = check_parity(model, new, report.nodes, "input-noise")
    assert parity.status == "passed"
    assert {c.name for c in parity.outputs} == {"y", "e0", "e1", "e2"}

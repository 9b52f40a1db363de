"""Issue 10 (node count): passes that would walk a whole model for nothing are skipped."""

from __future__ import annotations

import onnx
import pytest
from conftest import parse

from onnxfix.passes import tidy as tidy_module


def test_a_default_domain_model_has_no_opset_import_to_drop_and_is_not_walked(monkeypatch):
    model = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) { y = Relu(x) }
""")

    def refuse(_model):
        raise AssertionError("walked")

    monkeypatch.setattr(tidy_module, "used_domains", refuse)
    after = onnx.ModelProto()
    after.CopyFrom(model)
    assert tidy_module.drop_unused_opset_imports(model, after) == []
    assert after == model


def test_an_inlined_functions_domain_is_still_dropped():
    before = parse("""
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[2] x) => (float[2] y) { y = local.F(x) }
<domain: "local", opset_import: ["" : 17]>
F (a) => (b) { b = Relu(a) }
""")
    after = onnx.ModelProto()
    after.CopyFrom(before)
    after.graph.node[0].CopyFrom(onnx.helper.make_node("Relu", ["x"], ["y"]))  # inlined
    del after.functions[:]
    assert tidy_module.drop_unused_opset_imports(before, after) == ["local"]
    assert [i.domain for i in after.opset_import] == [""]


THREE_DRAWS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  a = RandomNormalLike<scale = 2.0>(x)
  b = Add(x, a)
  c = RandomUniformLike(b)
  d = Mul(b, c)
  p = Sigmoid(d)
  e = RandomNormalLike<mean = 1.0>(p)
  y = Add(d, e)
}
"""


@pytest.mark.parametrize("mode, noise_dtype", [("input-noise", "float16"),
                                               ("constant", "same"), ("seeded", "same")])
def test_in_place_splicing_gives_what_rebuilding_the_node_list_gives(monkeypatch, mode,
                                                                     noise_dtype):
    import onnxfix
    from onnxfix.graph import graph_edit

    kwargs = {"dims": {"batch": 2}} if mode == "constant" else {}
    in_place, _ = onnxfix.rewrite(parse(THREE_DRAWS), mode, noise_dtype=noise_dtype,
                                  check=False, **kwargs)
    monkeypatch.setattr(graph_edit, "IN_PLACE_EDITS", 0)
    rebuilt, _ = onnxfix.rewrite(parse(THREE_DRAWS), mode, noise_dtype=noise_dtype,
                                 check=False, **kwargs)
    assert in_place.SerializeToString() == rebuilt.SerializeToString()
    assert "RandomNormalLike" not in [n.op_type for n in in_place.graph.node]


def test_a_rewrite_that_reads_no_constant_indexes_none(monkeypatch):
    """The emit looks constants up in the plan's unchanged model, lazily: a draw whose rewrite
    needs no constant (RandomNormalLike -> noise input) indexes none of the initializers."""
    import onnxfix
    from onnxfix.graph import find

    def refuse(_model):
        raise AssertionError("every constant was indexed")

    monkeypatch.setattr(find, "constant_values", refuse)
    new, report = onnxfix.rewrite(parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  c = Constant<value = float[4] {1, 2, 3, 4}>()
  a = Add(x, c)
  r = RandomNormalLike(a)
  y = Mul(a, r)
}
"""), check=False)
    assert [r.replacement.name for r in report.nodes] == ["noise_r"]

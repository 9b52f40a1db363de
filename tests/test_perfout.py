"""Issue 10 (node count): passes that would walk a whole model for nothing are skipped."""

from __future__ import annotations

import onnx
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

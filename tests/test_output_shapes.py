"""Declared output shapes that shape inference proves wrong are re-declared and reported.

A real MIGraphX test model declares its Multinomial output `[?, 10]` but samples 12 per row
(`[N, 12]`); IREE trusts the declaration and fails to compile, so the rewrite corrects it.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import op_types, real_model_path, run
from onnx import TensorProto, helper

import onnxfix
from onnxfix.report import ShapeCorrection


def _wrong_declaration(declared: list) -> onnx.ModelProto:
    node = helper.make_node("Multinomial", ["logits"], ["y"], sample_size=12)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, declared)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def _declared(model: onnx.ModelProto, name: str) -> list:
    out = next(o for o in model.graph.output if o.name == name)
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
            for d in out.type.tensor_type.shape.dim]


def test_a_contradicted_output_shape_is_redeclared_and_reported():
    new, report = onnxfix.rewrite(_wrong_declaration([None, 10]))
    assert _declared(new, "y") == ["n", 12]
    assert report.redeclared_outputs == [ShapeCorrection("y", [None, 10], ["n", 12])]
    assert json.loads(report.to_json())["redeclared_outputs"] == [
        {"output": "y", "declared": [None, 10], "inferred": ["n", 12]}]
    y = run(new, {"logits": np.zeros((3, 10), np.float32),
                  "noise_y": np.full((3, 12), 0.5, np.float32)})["y"]
    assert y.shape == (3, 12)


def test_a_wrong_rank_is_redeclared_too():
    _, report = onnxfix.rewrite(_wrong_declaration(["n", 12, 1]), check=False)
    assert report.redeclared_outputs == [ShapeCorrection("y", ["n", 12, 1], ["n", 12])]


def test_a_merely_less_precise_declaration_is_left_alone():
    new, report = onnxfix.rewrite(_wrong_declaration([None, None]), check=False)
    assert report.redeclared_outputs == []
    assert _declared(new, "y") == [None, None]
    new, report = onnxfix.rewrite(_wrong_declaration(["batch", 12]), check=False)
    assert report.redeclared_outputs == [] and _declared(new, "y") == ["batch", 12]


def test_the_cli_summary_says_which_output_was_redeclared(tmp_path):
    from test_cli import invoke

    src = tmp_path / "m.onnx"
    onnx.save(_wrong_declaration([None, 10]), src)
    result = invoke("rewrite", src, tmp_path / "o.onnx")
    assert result.exit_code == 0, result.stderr
    assert ("  output 'y' re-declared: declared [?, 10], shape inference proves [n, 12]"
            in result.stdout.splitlines())


def test_the_migraphx_multinomial_model_gets_its_true_output_shape(tmp_path):
    path = real_model_path("migraphx_multinomial_autoseed_dyn_test.onnx")
    new, report = onnxfix.rewrite(path, output=tmp_path / "m.onnx")
    assert report.redeclared_outputs == [
        ShapeCorrection("output", [None, 10], ["input_dim0", 12])]
    assert _declared(onnx.load(tmp_path / "m.onnx"), "output") == ["input_dim0", 12]
    assert report.parity.status == "passed"


# -- issue 10: the re-declaration reuses the plan's one inference where that is proven --------

def _counting_inference(monkeypatch) -> list[onnx.ModelProto]:
    calls = []
    real = onnx.shape_inference.infer_shapes

    def counted(model, *args, **kwargs):
        calls.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", counted)
    return calls


def _graph(text: str, declared: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[n, 4] x) => (float{declared} y) {{
{text}
}}
""")


NORMAL_LIKE = "a = Relu(x)\n r = RandomNormalLike<scale = 2.0>(a)\n y = Add(a, r)"
BERNOULLI = "p = Sigmoid(x)\n b = Bernoulli<dtype = 1>(p)\n y = Add(p, b)"


def test_a_draw_that_keeps_its_facts_costs_no_second_inference_of_the_graph(monkeypatch):
    calls = _counting_inference(monkeypatch)
    new, report = onnxfix.rewrite(_graph(NORMAL_LIKE, "[n, 4]"), check=False)
    # the plan's inference of the whole graph, then the replacement nodes alone, strictly,
    # for the validate pass (passes.local_check): every dim of the draw known, the output
    # re-declaration reads that proof (no inference with data propagation of them again)
    assert [op_types(m) for m in calls] == [["Relu", "RandomNormalLike", "Add"],
                                            ["Constant", "Mul"]]
    assert report.redeclared_outputs == [] and _declared(new, "y") == ["n", 4]


def test_the_strict_proof_of_the_replacements_stands_only_for_draws_of_known_dims(monkeypatch):
    """Data propagation may fill an unknown dim the strict inference left unknown: a draw
    with one is inferred again, proof or not."""
    from onnxfix.graph.shapes import TensorFacts  # noqa: PLC0415
    from onnxfix.passes import output_shapes  # noqa: PLC0415
    from onnxfix.passes.emit import Emitted  # noqa: PLC0415
    model = _graph(NORMAL_LIKE, "[n, 4]")
    emitted = Emitted("input-noise", model, sites=[object()], alone=[model], alone_proven=True)
    outputs = {"y": TensorFacts(TensorProto.FLOAT, ["n", 4])}
    inferred = []
    monkeypatch.setattr(output_shapes, "inferred_or_none",
                        lambda m: inferred.append(m) or None)
    known = {"r": TensorFacts(TensorProto.FLOAT, ["n", 4])}
    assert output_shapes.reusable_output_facts(outputs, known, model, emitted) is outputs
    assert inferred == []
    unknown = {"r": TensorFacts(TensorProto.FLOAT, [None, 4])}
    assert output_shapes.reusable_output_facts(outputs, unknown, model, emitted) is None
    assert inferred == [model]
    emitted.alone_proven = False  # no proof: inferred, as before
    assert output_shapes.reusable_output_facts(outputs, known, model, emitted) is None
    assert len(inferred) == 2


def test_a_contradicted_output_downstream_of_a_draw_is_still_redeclared(monkeypatch):
    calls = _counting_inference(monkeypatch)
    new, report = onnxfix.rewrite(_graph(NORMAL_LIKE, "[n, 5]"), check=False)
    assert report.redeclared_outputs == [ShapeCorrection("y", ["n", 5], ["n", 4])]
    assert _declared(new, "y") == ["n", 4]
    # the declaration adds to inference: the plan infers again with it; the correction
    # comes from a fresh inference of the rewritten model, as it always did
    assert [len(m.graph.node) for m in calls] == [3, 3, 4]


@pytest.mark.parametrize("declared, corrected", [("[n, 4]", []), ("[n, 3, 1]", [["n", 4]])])
def test_a_replacement_reading_a_computed_value_is_inferred_with_the_graph(
        monkeypatch, declared, corrected):
    """Bernoulli's replacement reads p, computed by the graph: its facts are not proven alone,
    so the rewritten model is inferred whole."""
    calls = _counting_inference(monkeypatch)
    new, report = onnxfix.rewrite(_graph(BERNOULLI, declared), check=False)
    assert [c.inferred for c in report.redeclared_outputs] == corrected
    assert op_types(calls[-1]) == op_types(new)
    y = run(new, {"x": np.zeros((2, 4), np.float32),
                  "noise_b": np.full((2, 4), 0.25, np.float32)})["y"]
    np.testing.assert_array_equal(y, np.full((2, 4), 1.5, np.float32))  # p = 0.5, u < p


@pytest.mark.parametrize("declared", ["[n, 4]", "[batch, 4]", "[?, 4]", "[n, ?]", "[3, 4]"])
def test_the_plan_reads_the_facts_inference_gives_with_the_declarations(declared):
    from onnxfix.graph.shapes import TensorFacts, infer_facts
    from onnxfix.passes.output_shapes import infer_for_plan

    model = _graph(NORMAL_LIKE, declared)
    before = model.SerializeToString()
    facts, outputs, _ = infer_for_plan(model)
    assert dict(facts) == dict(infer_facts(model))
    # offered for reuse only where the plan's facts are those of the cleared inference
    restated = declared in ("[n, 4]", "[?, 4]", "[n, ?]")
    assert outputs == ({"y": TensorFacts(onnx.TensorProto.FLOAT, ["n", 4])} if restated
                       else None)
    assert model.SerializeToString() == before

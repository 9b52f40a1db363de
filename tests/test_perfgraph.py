"""Issue 10, node-count axis and start-up: work skipped must be work whose answer is known.

Speed itself is measured by scripts/bench.py (no timing asserts here); these tests pin what
makes it fast - which modules a command imports, which analyses a plan runs - and that the
answers stay the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from conftest import parse
from onnx import TensorProto, helper

import onnxfix
import onnxfix.passes.plan as plan_module
from onnxfix.errors import ModelError
from onnxfix.graph.naming import NameAllocator
from onnxfix.passes.plan import plan
from onnxfix.passes.prepare import prepare

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  a = Relu(x)
  e = RandomNormalLike<scale=0.5>(a)
  y = Add(a, e)
}
"""

# the draw's last dim is the sum of values computed at run time
DATA_DEPENDENT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, ?] y) {
  n = ReduceSum<keepdims=0>(x)
  ni = Cast<to=7>(n)
  one = Constant<value=int64[1] {1}>()
  nr = Reshape(ni, one)
  b = Shape<start=0, end=1>(x)
  shp = Concat<axis=0>(b, nr)
  base = ConstantOfShape(shp)
  z = RandomNormalLike(base)
  y = Add(base, z)
}
"""


def _count_traces(monkeypatch) -> list:
    calls = []
    real = plan_module.trace

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(plan_module, "trace", counted)
    return calls


def test_the_trace_is_skipped_when_every_noise_dim_is_known(monkeypatch):
    calls = _count_traces(monkeypatch)
    model_plan = plan(prepare(parse(CHAIN)))
    assert calls == []
    site = model_plan.sites[0]
    assert [(d.kind, d.declared) for d in site.dims] == [("input", "batch"), ("constant", 4)]
    assert site.shape_origin is None and not site.per_iteration and site.trip_origins == []


def test_the_trace_still_runs_once_for_a_dim_the_inputs_do_not_give(monkeypatch):
    calls = _count_traces(monkeypatch)
    model_plan = plan(prepare(parse(DATA_DEPENDENT)))
    assert len(calls) == 1
    dims = model_plan.sites[0].dims
    assert [d.kind for d in dims] == ["input", "data-dependent"]
    assert "the values of input 'x'" in dims[1].origin


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120).stdout


def test_help_imports_neither_onnx_nor_numpy_nor_rich():
    out = _python(
        "import sys, contextlib, io\n"
        "from onnxfix.cli import app\n"
        "with contextlib.redirect_stdout(io.StringIO()) as text:\n"
        "    try:\n"
        "        app(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('onnx', 'numpy', 'rich', 'onnxruntime', 'onnxfix.api')\n"
        "print(repr(text.getvalue()[:14]), sorted(m for m in heavy if m in sys.modules))\n")
    assert out.split() == ["'Usage:", "onnxfix'", "[]"]


def test_a_no_check_rewrite_imports_no_check_inspect_or_feeds_module(tmp_path: Path):
    model = tmp_path / "m.onnx"
    model.write_bytes(parse(CHAIN).SerializeToString())
    out = _python(
        "import sys\n"
        "from onnxfix.cli import app\n"
        "try:\n"
        f"    app(['rewrite', {str(model)!r}, {str(tmp_path / 'o.onnx')!r}, '--no-check', '-q'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "unused = ('onnxruntime', 'onnxfix.check.check_guard', 'onnxfix.inspection',\n"
        "          'onnxfix.feeds', 'multiprocessing', 'statistics', 'logging', 'pydantic')\n"
        "print(sorted(m for m in unused if m in sys.modules))\n")
    assert out.strip() == "[]"
    assert (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("first", ["import onnxfix.rewrite", "from onnxfix.rewrite import "
                                   "rewrite_model", "import onnxfix.inspection", "pass"])
def test_the_package_functions_stay_functions_whatever_is_imported_first(first: str):
    out = _python(f"{first}\nimport json, onnxfix\n"
                  "print(json.dumps([getattr(onnxfix, n).__module__ for n in "
                  "('rewrite', 'inspect', 'noise_feeds')] + [onnxfix.__version__]))\n")
    assert json.loads(out) == ["onnxfix.api"] * 3 + ["0.1.0"]


# -- inspect lists nodes without onnx's checker -----------------------------------------

def _save(model, tmp_path: Path, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_inspect_runs_no_checker_on_a_model_it_can_read(tmp_path: Path, monkeypatch):
    path = _save(parse(CHAIN), tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("inspect ran onnx's checker")

    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    report = onnxfix.inspect(path)
    assert [(n.op_type, n.output, n.shape, n.noise["input"]) for n in report.nodes] == [
        ("RandomNormalLike", "e", ["batch", 4], "noise_e")]


def test_inspect_lists_a_model_the_checker_refuses_and_the_rewrite_still_refuses_it(tmp_path):
    # Add reads a tensor nobody produces: no rewrite can be proven, the draw can be listed
    text = CHAIN.replace("y = Add(a, e)", "y = Add(e, nobody)")
    path = _save(onnx.parser.parse_model(text), tmp_path)  # conftest's parse checks it
    report = onnxfix.inspect(path)
    assert [(n.op_type, n.shape) for n in report.nodes] == [("RandomNormalLike", ["batch", 4])]
    with pytest.raises(ModelError, match=r"invalid ONNX model: Nodes in a graph must be "
                                         r"topologically sorted"):
        onnxfix.rewrite(path, check=False)


def test_inspect_refuses_in_the_checkers_words_a_model_it_cannot_make_sense_of(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("RandomNormalLike", [], ["e"]), helper.make_node("Identity", ["e"],
                                                                           ["y"])],
        "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                 tmp_path)
    with pytest.raises(ModelError) as info:
        onnxfix.inspect(path)
    assert str(info.value) == (
        f"{path}: invalid ONNX model: Node with schema(::RandomNormalLike:1) has input size 0 "
        f"not in range [min=1, max=1]. ==> Context: Bad node spec for node. Name: OpType: "
        f"RandomNormalLike")


# -- fresh names from the model's bytes ----------------------------------------------------

NAMED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] noise_e_x) {
  noise_e = Relu(x)
  noise_e_x = Identity(noise_e)
}
"""


# bytes first / names at once / names collected once the byte searches are spent
@pytest.mark.parametrize("snapshot_limit,search_limit", [(64 * 2**20, 64), (0, 64),
                                                         (64 * 2**20, 1)])
def test_fresh_names_avoid_the_models_names_and_each_other(monkeypatch, snapshot_limit,
                                                           search_limit):
    monkeypatch.setattr(NameAllocator, "SNAPSHOT_LIMIT", snapshot_limit)
    monkeypatch.setattr(NameAllocator, "SEARCH_LIMIT", search_limit)
    model = parse(NAMED)
    names = NameAllocator(model)
    # 'noise_e' is taken; 'noise_e_x' contains the bytes of 'noise_e_' but 'noise_e_1' is free
    assert [names.fresh("noise_e"), names.fresh("noise_e"), names.fresh("noise e.x"),
            names.fresh("batch"), names.fresh("fresh")] == [
        "noise_e_1", "noise_e_2", "noise_e_x_1", "batch_1", "fresh"]
    copy = names.copy()
    assert copy.fresh("fresh") == "fresh_1" and names.fresh("fresh_1") == "fresh_1"
    # names are the model's as it was when the allocator was made
    model.graph.node[0].name = "later"
    assert names.fresh("later") == "later"


def test_byte_searches_are_bounded_then_the_names_are_collected_once(monkeypatch):
    # a search scans the model's bytes: thousands of fresh names must not mean thousands
    monkeypatch.setattr(NameAllocator, "SEARCH_LIMIT", 3)
    names = NameAllocator(parse(NAMED))
    assert [names.fresh(f"free{k}") for k in range(3)] == ["free0", "free1", "free2"]
    assert names._names is None  # three names, three byte searches
    assert names.fresh("free3") == "free3" and names._names is not None
    assert names.fresh("noise_e") == "noise_e_1"


def test_copies_share_the_names_one_of_them_collects(monkeypatch):
    # the plan's allocator is copied for its noise names, each emit and the local proof:
    # the model's names are collected once for all of them, each copy's own names stay its own
    import onnxfix.graph.naming as naming

    monkeypatch.setattr(NameAllocator, "SEARCH_LIMIT", 0)
    collected = []
    real = naming.model_names
    monkeypatch.setattr(naming, "model_names", lambda m: collected.append(1) or real(m))
    before = NameAllocator(parse(NAMED))
    first, second = before.copy(), before.copy()
    assert first.fresh("noise_e") == "noise_e_1" and len(collected) == 1
    assert second.fresh("noise_e") == "noise_e_1" and second.fresh("mine") == "mine"
    assert before.taken("noise_e_x") and not before.taken("noise_e_1")
    assert not first.taken("mine") and not before.taken("mine")
    assert len(collected) == 1


def test_reader_walk_stops_at_the_first_reader_of_each_name():
    from onnxfix.graph.graph_edit import names_used, unread

    model = parse(CHAIN)
    wanted = {"x", "a", "e", "y", "nothing"}
    assert unread(model.graph, wanted) == wanted - names_used(model.graph) == {"nothing"}

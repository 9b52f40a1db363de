"""The models the conditional check runs besides the rewritten one.

- the capture model: the original with every rewritten draw (and the inputs its op's
  `standardize` needs) exposed as main-graph outputs;
- the cut model: the original with its main-graph draws fed as inputs (--noise-dtype);
- a probe: a model with extra tensors exposed as outputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxfix.check.capture import Exposer
from onnxfix.check.compare import CheckSkipped
from onnxfix.errors import ModelError
from onnxfix.graph.builder import NodeBuilder
from onnxfix.graph.find import default_opset, find_sites
from onnxfix.graph.functions import inline_random_functions
from onnxfix.graph.graph_edit import names_read
from onnxfix.graph.noisedims import BOUNDED, pad_to_bounds
from onnxfix.graph.shapes import infer_facts
from onnxfix.ops import attrs_of, spec_for
from onnxfix.report import NodeRecord

LOOPS = ("Loop", "Scan")


@dataclass
class Captured:
    record: NodeRecord
    node: onnx.NodeProto
    lead: int  # leading iteration axes (enclosing Loop/Scan levels)
    outputs: dict[int, str] = field(default_factory=dict)  # output index -> exposed name
    inputs: dict[int, str] = field(default_factory=dict)   # input index -> exposed name
    # (exposed If condition, value under which the node's branch runs), for If levels that
    # are not inside a loop: when the branch did not run, there is no draw to condition on.
    branches: list[tuple[str, bool]] = field(default_factory=list)

    @functools.cached_property
    def spec(self):
        return spec_for(self.node, self.record.distribution)

    @functools.cached_property
    def attrs(self) -> dict:
        """The node's attribute values (read per draw at each check size)."""
        return attrs_of(self.node)

    def ran(self, got: dict) -> bool:
        """Its If branches ran and its inputs exist (None: under an If in a Loop, the
        branch ran in no iteration)."""
        return (all(bool(np.asarray(got[cond]).reshape(-1)[0]) == want
                    for cond, want in self.branches)
                and all(got[name] is not None for name in self.inputs.values()))


def inlined(original: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with local functions holding random nodes inlined (their draws become visible);
    `original` itself when it has no local function (the check only reads it: its models
    are copies made from it)."""
    if not original.functions:
        return original
    base = onnx.ModelProto()
    base.CopyFrom(original)
    return inline_random_functions(base)


def capture_model(base: onnx.ModelProto, records: list[NodeRecord], facts=None) -> tuple[
        list[Captured], onnx.ModelProto, Exposer]:
    """A copy of `base` exposing every rewritten draw, and what each capture is. facts:
    `infer_facts(base)` when the caller has it (one inference serves the whole check)."""
    model = onnx.ModelProto()
    model.CopyFrom(base)
    facts = infer_facts(model) if facts is None else facts
    sites = {s.output: s for s in find_sites(model)}
    opset = default_opset(model)
    exposer = Exposer(model)
    captures = []
    for rec in records:
        site = sites.get(rec.output)
        if site is not None and rec.replacement is not None:
            captures.append(_capture(model, site, rec, facts, opset, exposer))
    return captures, model, exposer


def _capture(model, site, rec: NodeRecord, facts, opset: int, exposer: Exposer) -> Captured:
    node = site.node
    spec = spec_for(node, rec.distribution)
    spec.expose_outputs(node, exposer.names.fresh)
    lead = sum(1 for s in site.scopes if s.owner.op_type in LOOPS)
    cap = Captured(rec, node, lead)
    for k, scope in enumerate(site.scopes):
        if scope.owner.op_type in LOOPS:
            break
        if scope.owner.op_type == "If":
            cond = exposer.expose(scope.owner.input[0], onnx.TensorProto.BOOL, site.scopes[:k])
            cap.branches.append((cond, scope.attr == "then_branch"))
    pad = _bounds_padder(model, site, rec, lead, facts, exposer.names)
    for i, out in enumerate(node.output):
        if out:
            elem = spec.output_type(node, i, opset, _elem(facts, node.output[0], rec))
            elem = elem if elem is not None else _elem(facts, out, rec)
            cap.outputs[i] = exposer.expose(pad(out, "draw"), elem, site.scopes)
    wanted = set(spec.capture_inputs(node))
    for i, inp in enumerate(node.input):
        if inp and inp in wanted:
            cap.inputs[i] = exposer.expose(pad(inp, "source" if i == 0 else ""),
                                           _elem(facts, inp, rec), site.scopes)
    return cap


def _bounds_padder(model, site, rec, lead: int, facts, names):
    """name, role -> name padded to the bounds of a per-iteration draw (see pad_to_bounds)."""
    bounded = [d for d in rec.replacement.dims if d["kind"] == BOUNDED and d["axis"] >= lead]
    if not lead or not bounded:
        return lambda name, role: name
    spec = spec_for(site.node, rec.distribution)

    def pad(name: str, role: str) -> str:
        f = facts.get(name)
        if not role or f is None or f.shape is None:
            return name
        axes = {}
        for d in bounded:
            a = (spec.draw_axis(d["axis"] - lead) if role == "draw"
                 else d.get("source_axis"))
            if a is not None and a < len(f.shape):
                axes[a] = d["size"]
        if not axes:
            return name
        b = NodeBuilder(names, default_opset(model), f"onnxfix_check_{name}")
        try:
            padded = pad_to_bounds(b, name, len(f.shape), axes)
        except ModelError as e:
            raise CheckSkipped(str(e)) from None
        site.container.node.extend(b.nodes)
        return padded

    return pad


def _elem(facts, name: str, rec: NodeRecord) -> int:
    f = facts.get(name)
    if f is not None and f.elem_type:
        return f.elem_type
    return onnx.TensorProto.DataType.Value(rec.replacement.dtype.upper())


def main_names(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node for o in n.output} | {
        t.name for t in model.graph.initializer}


def main_draws(captures: list[Captured], main: set[str], out_set: set[str],
               lossy: bool) -> dict[str, str]:
    """Main-graph draw tensors of the rewritten model -> their captures from the original.

    A Dropout's mask is a draw too: cutting the node out of the original must feed it.
    """
    exposed = {}
    for c in captures:
        if c.lead or c.record.output not in main:
            continue
        for i, out in enumerate(c.node.output):
            if out in main and i in c.outputs and (lossy or out not in out_set):
                exposed[out] = c.outputs[i]
    return exposed


def with_outputs(model: onnx.ModelProto, names: list[str], facts=None) -> onnx.ModelProto:
    """A copy of `model` that also outputs `names`, typed from `facts` (default: `model`'s
    own inference)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    facts = infer_facts(m) if facts is None else facts
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            f = facts.get(name)
            elem = f.elem_type if f and f.elem_type else onnx.TensorProto.FLOAT
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return m


def cut_model(base: onnx.ModelProto, draws: list[str]) -> onnx.ModelProto:
    """The original with its main-graph random nodes cut out and their draws fed as inputs.

    Graph surgery of the textbook kind, so onnx-graphsurgeon does it: each draw tensor becomes
    a graph input, its producer loses it, and cleanup drops what only fed the cut nodes.
    Weights are not touched: graphsurgeon reads initializer values only on demand and exports
    the original tensors (external-data references included) as they were.
    """
    import onnx_graphsurgeon as gs  # noqa: PLC0415 - heavy, and only --noise-dtype needs it

    facts = infer_facts(base)
    graph = gs.import_onnx(base)
    tensors = graph.tensors()
    cut = set(draws)
    for node in graph.nodes:
        if node.outputs and node.outputs[0].name in cut:
            node.outputs.clear()
    for d in draws:
        f = facts.get(d)
        elem = f.elem_type if f and f.elem_type else onnx.TensorProto.FLOAT
        feed = tensors[d]
        feed.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        graph.inputs.append(feed)
    graph.cleanup(remove_unused_graph_inputs=False)
    cut = gs.export_onnx(graph, do_type_check=False)
    cut.ir_version = base.ir_version
    del cut.opset_import[:]
    cut.opset_import.extend(base.opset_import)
    return cut


def tainted_outputs(model: onnx.ModelProto, sources: list[str]) -> set[str]:
    """Main-graph outputs that depend on any of `sources` (draws left random)."""
    if not sources:
        return set()
    tainted = set(sources)
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if names_read(node) & tainted and not set(node.output) <= tainted:
                tainted.update(o for o in node.output if o)
                changed = True
    return {o.name for o in model.graph.output if o.name in tainted}

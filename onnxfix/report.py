"""What a rewrite did: the report's records (built last, from the emit's typed records and the
check's verdict) and their JSON form. The CLI prints its summary from them."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from operator import attrgetter

import onnx

from onnxfix.graph.find import iter_graphs, main_op_census


@dataclass
class Replacement:
    kind: str  # "input" | "initializer" | "deterministic" | "seeded" (name: the seed input)
    name: str
    shape: list | None
    dtype: str
    value: str = ""  # deterministic mode: which value replaced the draw
    cast_to: str = ""  # a noise input fed in another dtype (--noise-dtype): cast in-graph
    # per noise axis: what it is (constant, input, iterations, derived, bounded) and its size
    dims: list[dict] = field(default_factory=list)
    cast_name: str = field(default="", repr=False, compare=False, metadata={"internal": True})


@dataclass
class NodeRecord:
    op_type: str
    node: str
    output: str
    graph: str
    distribution: dict
    replacement: Replacement | None = None
    status: str = "rewritten"  # or "kept" (note says why), or "removed" (a dead draw)
    note: str = ""


@dataclass
class ShapeCorrection:
    """A graph output whose declared shape shape inference proved wrong, and its new one."""

    output: str
    declared: list  # dims: int, a symbolic name, or None (unknown)
    inferred: list


@dataclass
class OutputCheck:
    name: str
    dims: dict
    shape: list
    max_abs_err: float
    max_rel_err: float
    passed: bool
    note: str = ""


@dataclass
class DistributionCheck:
    """One distribution test: many runs of a draw's transform against a reference."""

    output: str  # the draw (the random node's output name)
    op_type: str
    against: str  # "ideal" (the node's exact distribution) or "original" (onnxruntime's draws)
    statistic: float  # Pearson chi-square
    threshold: float  # its quantile at 1 - 1e-6
    df: int
    samples: int
    passed: bool


@dataclass
class Parity:
    status: str  # "passed" | "failed" | "skipped"
    reason: str = ""
    atol: float | None = None
    rtol: float | None = None
    sizes: list[dict] = field(default_factory=list)
    outputs: list[OutputCheck] = field(default_factory=list)
    distributions: list[DistributionCheck] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # what each check input held
    note: str = ""  # for a skipped check: what the skip means


@dataclass
class RewriteReport:
    mode: str
    input: str | None = None
    output: str | None = None
    nodes: list[NodeRecord] = field(default_factory=list)
    parity: Parity | None = None
    ops_before: dict = field(default_factory=dict)
    ops_after: dict = field(default_factory=dict)
    new_inputs: list[str] = field(default_factory=list)
    ops_kept: int = 0
    redeclared_outputs: list[ShapeCorrection] = field(default_factory=list)
    seed_input: str | None = None  # seeded mode: the int64 scalar input taking the seed

    def to_dict(self) -> dict:
        d = asdict(self)
        for node in d["nodes"]:
            if node.get("replacement"):
                node["replacement"].pop("cast_name", None)
        if d["parity"] is None:
            d["parity"] = {"status": "skipped", "reason": "not run"}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_jsonable)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


_OP_TYPE = attrgetter("op_type")


def op_counts_in_place(before: dict[str, int], emitted) -> dict[str, int]:
    """op_counts of an output that is the input with each random node replaced in place by
    its replacement nodes (passes.emit.Emitted.in_place), from the input's counts: no walk
    of the output's nodes."""
    counts = Counter(before)
    counts.subtract(e.plan.site.node.op_type for e in emitted.sites)
    counts.update(node.op_type for node in emitted.replacement_nodes)
    return dict(sorted((op, n) for op, n in counts.items() if n))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op counts over every graph and function body in the model."""
    counts: Counter[str] = Counter()
    for container, _ in iter_graphs(model):
        if container is model.graph:  # counted once for the plan too (main_op_census)
            for (_, op), n in main_op_census(model).items():
                counts[op] += n
        else:
            counts.update(map(_OP_TYPE, container.node))  # no Python frame per node
    return dict(sorted(counts.items()))

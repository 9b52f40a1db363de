"""Shape and type facts: inference with data propagation, ORT's symbolic fallback, dim fixing."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain, count, repeat
from operator import attrgetter

import onnx

from onnxfix.errors import UsageError, entries, param_name
from onnxfix.graph.find import iter_graphs
from onnxfix.graph.naming import sanitize

Dim = int | str | None  # a size, a symbolic name, or unknown
Shape = list[Dim] | None  # None: rank unknown


@dataclass
class TensorFacts:
    elem_type: int | None
    shape: Shape


def _facts_from_type(tp: onnx.TypeProto) -> TensorFacts | None:
    if not tp.HasField("tensor_type"):
        return None
    # a graph declares the same few types over and over (a chain of [batch, 16] floats): the
    # serialized type is the key, and each caller gets its own shape list
    fact = _facts_of_bytes(tp.SerializeToString())
    return TensorFacts(fact.elem_type, None if fact.shape is None else list(fact.shape))


@functools.lru_cache(maxsize=4096)
def _facts_of_bytes(serialized: bytes) -> TensorFacts:
    t = onnx.TypeProto.FromString(serialized).tensor_type
    shape: Shape = None
    if t.HasField("shape"):
        shape = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                shape.append(d.dim_param)
            else:
                shape.append(None)
    return TensorFacts(t.elem_type or None, shape)


_NAME = attrgetter("name")
_UNSEEN = object()
# Lookups a Facts answers by searching its declarations before it indexes them all.
SEARCHED_LOOKUPS = 64


class Facts(Mapping):
    """name -> TensorFacts over the values a model declares (all graphs share one namespace).

    Read lazily: a lookup searches the declarations' names (the last declaration wins, as in
    graph order) and turns only what it finds into TensorFacts; after SEARCHED_LOOKUPS lookups
    every name is indexed. A plan of a 100k-node graph that reads a handful of shapes then
    neither indexes nor converts 200k declarations (holding a Python object per declaration
    was a tenth of such a rewrite). A name whose last declaration is not a tensor falls back
    to its last tensor declaration."""

    def __init__(self, model: onnx.ModelProto | None, seqs: list | None = None):
        graphs = [] if model is None else [g for g, _ in iter_graphs(model)
                                           if isinstance(g, onnx.GraphProto)]
        # in the order in which a later declaration wins
        self._seqs = seqs if seqs is not None else [
            seq for g in graphs for seq in (g.initializer, g.input, g.output, g.value_info)]
        self._names: list[list[str] | None] | None = None
        self._index: dict[str, tuple[int, int]] | None = None
        self._searches = 0
        self._done: dict[str, TensorFacts | None] = {}

    def _all_names(self) -> list[list[str]]:
        return [self._names_of(k) for k in range(len(self._seqs))]

    def _names_of(self, k: int) -> list[str]:
        """The names of one sequence, listed on first use (a name found in a later sequence
        never lists the earlier ones: a 100k-node graph's initializers, say)."""
        if self._names is None:
            self._names = [None] * len(self._seqs)
        if self._names[k] is None:
            self._names[k] = list(map(_NAME, self._seqs[k]))
        return self._names[k]

    def _where(self, name: str) -> tuple[int, int] | None:
        """(sequence, position) of the last declaration of `name`, or None."""
        if self._index is None and self._searches >= SEARCHED_LOOKUPS:
            self._index = {}
            for k, names in enumerate(self._all_names()):
                self._index.update(zip(names, zip(repeat(k), count()), strict=False))
        if self._index is not None:
            return self._index.get(name)
        self._searches += 1
        for k in reversed(range(len(self._seqs))):
            names = self._names_of(k)
            if name in names:
                return k, len(names) - 1 - names[::-1].index(name)
        return None

    def _convert(self, decl) -> TensorFacts | None:
        if isinstance(decl, onnx.TensorProto):
            return TensorFacts(decl.data_type, [int(d) for d in decl.dims])
        return _facts_from_type(decl.type)

    def _lookup(self, name: str) -> TensorFacts | None:
        if name not in self._done:
            where = self._where(name)
            decl = None if where is None else self._seqs[where[0]][where[1]]
            fact = None if decl is None else self._convert(decl)
            if fact is None and decl is not None:
                fact = self._last_tensor(name)
            self._done[name] = fact
        return self._done[name]

    def _last_tensor(self, name: str) -> TensorFacts | None:
        found = None
        for seq in self._seqs:  # an initializer always converts
            for decl in seq:
                fact = self._convert(decl) if decl.name == name else None
                found = fact if fact is not None else found
        return found

    def get(self, name: str, default=None):
        # Mapping.get goes through __getitem__ and a KeyError per missing name: the plan and
        # the check ask tens of thousands of times for a graph of thousands of draws
        fact = self._done.get(name, _UNSEEN)
        if fact is _UNSEEN:
            fact = self._lookup(name)
        return default if fact is None else fact

    def __contains__(self, name) -> bool:
        return self.get(name) is not None

    def __getitem__(self, name: str) -> TensorFacts:
        fact = self._lookup(name)
        if fact is None:
            raise KeyError(name)
        return fact

    def __iter__(self):
        names = dict.fromkeys(chain.from_iterable(self._all_names()))
        return (n for n in names if self._lookup(n) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def collect_facts(model: onnx.ModelProto) -> Facts:
    """Types and shapes declared anywhere in the model (all graphs share one namespace)."""
    return Facts(model)


def declared_facts(seqs: list) -> Facts:
    """Facts over sequences of declarations (initializers or value infos), a later one
    winning, as a model's graphs would list them."""
    return Facts(None, seqs)


def inferred_or_none(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnx shape inference with data propagation (a new model), or None when it fails."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort here; checks come later
        return None


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    inferred = inferred_or_none(model)
    return model if inferred is None else inferred


def infer_facts(model: onnx.ModelProto) -> Facts:
    """onnx shape inference with data propagation; declared facts if inference fails."""
    return collect_facts(_inferred(model))


@functools.cache
def _symbolic_shape_inference():
    """onnxruntime's SymbolicShapeInference class, or None where it cannot be had.

    The module is loaded from its file: importing it as `onnxruntime.tools.symbolic_shape_infer`
    runs `onnxruntime/tools/__init__.py`, which imports torch whenever torch is installed
    (seconds of start-up for a module that does not need it).
    """
    import onnxruntime  # noqa: PLC0415 - heavy: only this inference path needs it

    name = "onnxfix._ort_symbolic_shape_infer"
    try:
        path = next(iter(onnxruntime.__path__)) + "/tools/symbolic_shape_infer.py"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module.SymbolicShapeInference
    except Exception:  # noqa: BLE001 - optional fallback
        sys.modules.pop(name, None)
        return None


def ort_symbolic_facts(model: onnx.ModelProto, auto_merge: bool = True
                       ) -> dict[str, TensorFacts]:
    """onnxruntime's symbolic shape inference, which ties more dims through Shape/Reshape.

    auto_merge=False: only dims it propagates, never two dims merged because they broadcast
    together (it then fails on models that need merging: {}).
    """
    inference = _symbolic_shape_inference()
    if inference is None:
        return {}
    import logging  # noqa: PLC0415 - with onnxruntime, only on this path

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    try:
        # it writes sym_shape_infer_temp.onnx into the working folder when it gives up
        with tempfile.TemporaryDirectory(prefix="onnxfix-") as scratch, \
                contextlib.chdir(scratch), \
                contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            out = inference.infer_shapes(model, auto_merge=auto_merge,
                                                      guess_output_rank=False, verbose=0)
    except Exception:  # noqa: BLE001
        return {}
    return collect_facts(out) if out is not None else {}


def input_dim_names(model: onnx.ModelProto) -> list[str]:
    """Symbolic dims that the main graph's inputs declare, in order of appearance."""
    names: list[str] = []
    for vi in model.graph.input:
        f = _facts_from_type(vi.type)
        for d in (f.shape or []) if f else []:
            if isinstance(d, str) and d not in names:
                names.append(d)
    return names


def model_dim_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()
    for container, _ in iter_graphs(model):
        if not isinstance(container, onnx.GraphProto):
            continue
        for seq in (container.input, container.output, container.value_info):
            for vi in seq:
                f = _facts_from_type(vi.type)
                if f is not None and f.shape:
                    names.update(d for d in f.shape if isinstance(d, str))
    return names


def has_unnamed_input_dims(model: onnx.ModelProto) -> bool:
    """Whether `name_unnamed_input_dims` would name a dim."""
    return any(not (d.HasField("dim_value") or (d.HasField("dim_param") and d.dim_param))
               for vi in model.graph.input
               if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
               for d in vi.type.tensor_type.shape.dim)


def name_unnamed_input_dims(model: onnx.ModelProto) -> int:
    """Give every unnamed dynamic dim of a graph input a readable name (in place); return
    how many were named.

    A dim with neither a size nor a name cannot be tied to a noise input or fixed with --dim;
    naming it `<input>_dim<k>` makes both possible and changes nothing else.
    """
    named = 0
    taken = None  # every dim name of the model: collected only when a dim needs a name
    for vi in model.graph.input:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") or (d.HasField("dim_param") and d.dim_param):
                continue
            taken = model_dim_names(model) if taken is None else taken
            base = f"{sanitize(vi.name)}_dim{k}"
            name, i = base, 1
            while name in taken:
                i += 1
                name = f"{base}_{i}"
            taken.add(name)
            d.dim_param = name
            named += 1
    return named


def fix_dims(model: onnx.ModelProto, dims: dict[str, int],
             extra: set[str] = frozenset()) -> dict[str, int]:
    """Replace symbolic dims by sizes everywhere they are declared (in place).

    `extra` names dims that onnxfix itself introduces (loop iteration axes); their values are
    returned for the caller to use.
    """
    if not dims:
        return {}
    known = model_dim_names(model) | set(extra)
    unknown = sorted(set(dims) - known)
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise UsageError(f"{param_name('dims')}: the model has no symbolic dim "
                         f"{', '.join(map(repr, unknown))}"
                         f" (its dims: {have})")
    for name, value in dims.items():
        if value < 1:
            raise UsageError(f"{entries('dims', {name: value})}: a dim must be a positive "
                             f"integer")
    for container, _ in iter_graphs(model):
        if not isinstance(container, onnx.GraphProto):
            continue
        for seq in (container.input, container.output, container.value_info):
            for vi in seq:
                if not vi.type.HasField("tensor_type"):
                    continue
                for d in vi.type.tensor_type.shape.dim:
                    if d.HasField("dim_param") and d.dim_param in dims:
                        d.dim_value = dims[d.dim_param]
    return {k: v for k, v in dims.items() if k in extra}


def parse_dim_flags(values: list[str]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--dim {item!r}: expected NAME=VALUE, e.g. --dim batch=1")
        try:
            size = int(value)
        except ValueError:
            raise UsageError(f"--dim {item!r}: {value!r} is not an integer") from None
        if size < 1:
            raise UsageError(f"--dim {item!r}: a dim must be a positive integer")
        if size > 2**32:
            raise UsageError(f"--dim {item!r}: too large (at most 2**32)")
        dims[name] = size
    return dims


def tied_score(shape: Shape, anchors: set[str]) -> int:
    """How much of a shape is pinned down: known sizes and dims named on the graph inputs."""
    if shape is None:
        return -1
    return sum(1 for d in shape if isinstance(d, int) or (isinstance(d, str) and d in anchors))

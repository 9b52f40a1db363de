"""What a model must satisfy before onnxfix works on it (each failure one ModelError line)."""

from __future__ import annotations

import functools

import onnx
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from onnxfix.errors import ModelError, one_line
from onnxfix.graph.find import iter_graphs, share_walk

# A declared dimension above this is refused as absurd (no real tensor has one).
MAX_DIM = 2**32


# What `precheck` can establish on the serialized model, before Python parses it.
TEXT, CHECKER = "text", "checker"
# `passed` for validate_model that skips onnx's checker (and only it)
NO_CHECKER = frozenset({CHECKER})


def validate_model(model: onnx.ModelProto, origin: str, data: bytes | None = None, *,
                   passed: frozenset[str] = frozenset()) -> None:
    """Refuse a model onnxfix cannot work on safely. `data`, when given, is `model`
    serialized (saves serializing it again for the UTF-8 check); `passed` names the checks
    `precheck` already passed on it."""
    if not model.HasField("graph") or not model.opset_import:
        raise ModelError(f"{origin}: not an ONNX model (no graph or no opset_import)")
    share_walk(model)  # an input: the passes after read the same walk (graph.find)
    _check_opsets(model, origin)
    if TEXT not in passed:
        _check_text(model, origin, data)
    if CHECKER not in passed:
        try:
            onnx.checker.check_model(model)
        except Exception as e:  # noqa: BLE001 - the checker raises several types
            raise ModelError(f"{origin}: invalid ONNX model: {one_line(e)}") from None
    _check_declared_dims(model, origin)


def precheck(data: bytes, *, checker: bool = True) -> frozenset[str]:
    """The checks the serialized model passes (TEXT, CHECKER), run before Python parses it:
    their own copies of the model then never coexist with Python's (half the peak memory).
    A check that fails here is run again on the parsed model, which words the refusal, so
    the outcome is the same as without a precheck. Stubs' locations in `data` are
    '#'-prefixed (see reader.checkable); an input's own external tensors are not, so the
    checker may look for their files in the current folder: passing then implies passing on
    checkable's copy, and a failure is checked again on it."""
    passed = set()
    try:
        if checker:  # else not run at all (open_model(checker=False))
            onnx.checker.check_model(data)
            passed.add(CHECKER)
    except Exception:  # noqa: BLE001 - refused again, and worded, after the parse
        pass
    mirror = _utf8_mirror()
    if mirror is not None:
        try:
            mirror().ParseFromString(data)
            passed.add(TEXT)
        except (DecodeError, RuntimeError, ValueError):
            pass
    return frozenset(passed)


def _known_opsets() -> dict[str, int]:
    latest_ml = max((row[3] for row in onnx.helper.VERSION_TABLE if row[3]), default=1)
    latest = onnx.defs.onnx_opset_version()
    return {"": latest, "ai.onnx": latest, "ai.onnx.ml": latest_ml}


def _check_opsets(model: onnx.ModelProto, origin: str) -> None:
    """An opset newer than this onnx release defines cannot be checked or rewritten safely."""
    known = _known_opsets()
    for imp in model.opset_import:
        latest = known.get(imp.domain)
        if latest is not None and not 1 <= imp.version <= latest:
            name = imp.domain or "ai.onnx (default)"
            raise ModelError(f"{origin}: opset {imp.version} of domain {name} is unknown "
                             f"(this onnx release knows versions 1 to {latest})")


def _check_text(model: onnx.ModelProto, origin: str, data: bytes | None) -> None:
    """protobuf hands string fields that are not valid UTF-8 back as bytes (names, dim
    params, doc strings...), which breaks everything downstream: refuse them up front.

    protobuf's own parser checks every string at once when the schema asks it to (the UTF-8
    mirror below); only when it finds a bad one does a Python walk name the field.
    """
    mirror = _utf8_mirror()
    if mirror is not None:
        try:
            mirror().ParseFromString(model.SerializeToString() if data is None else data)
            return
        except (DecodeError, RuntimeError, ValueError):
            pass  # a bad string, most likely: the walk names it
    _walk_text(model, origin)


def _walk_text(model: onnx.ModelProto, origin: str) -> None:
    stack: list = [model]
    while stack:
        msg = stack.pop()
        for fd, value in msg.ListFields():
            if fd.type == FieldDescriptor.TYPE_STRING:
                values = value if fd.is_repeated else [value]
                if any(not isinstance(v, str) for v in values):
                    raise ModelError(f"{origin}: a text field ({fd.full_name}) is not valid "
                                     f"UTF-8")
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                if fd.is_repeated:
                    stack.extend(value)
                else:
                    stack.append(value)


@functools.cache
def _utf8_mirror():
    """ModelProto's schema under another package name, with UTF-8 validation of every string
    field (edition 2023, proto2 semantics kept); None when this protobuf cannot build it."""
    try:
        proto = descriptor_pb2.FileDescriptorProto()
        onnx.ModelProto.DESCRIPTOR.file.CopyToProto(proto)
        if proto.dependency:
            return None
        old, new = f".{proto.package}.", ".onnxfix_utf8_mirror."
        proto.name, proto.package = "onnxfix_utf8_mirror.proto", new.strip(".")
        proto.syntax, proto.edition = "editions", descriptor_pb2.Edition.EDITION_2023
        features = proto.options.features
        features.utf8_validation = descriptor_pb2.FeatureSet.VERIFY
        features.enum_type = descriptor_pb2.FeatureSet.CLOSED
        features.repeated_field_encoding = descriptor_pb2.FeatureSet.EXPANDED
        _as_edition(proto.message_type, old, new)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(
            new.strip(".") + ".ModelProto"))
    except Exception:  # noqa: BLE001 - an older protobuf: the Python walk does the work
        return None


def _as_edition(messages, old: str, new: str) -> None:
    required = descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED
    for m in messages:
        for f in m.field:
            if f.label == required:
                f.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
                f.options.features.field_presence = descriptor_pb2.FeatureSet.LEGACY_REQUIRED
            if f.type == descriptor_pb2.FieldDescriptorProto.TYPE_GROUP:
                raise TypeError("groups are not mirrored")
            if f.type_name.startswith(old):
                f.type_name = new + f.type_name[len(old):]
        _as_edition(m.nested_type, old, new)


def _check_declared_dims(model: onnx.ModelProto, origin: str) -> None:
    declared = [vi for g, _ in iter_graphs(model) if isinstance(g, onnx.GraphProto)
                for vi in (*g.input, *g.output, *g.value_info)]
    for vi in declared:
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is None or not t.HasField("shape"):
            continue
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                raise ModelError(f"{origin}: '{vi.name}' declares a negative dimension "
                                 f"({d.dim_value})")
            if d.HasField("dim_value") and d.dim_value > MAX_DIM:
                raise ModelError(f"{origin}: '{vi.name}' declares an absurd dimension "
                                 f"({d.dim_value}): too large (over 2**32)")

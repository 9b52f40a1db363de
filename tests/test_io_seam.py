"""The I/O seam: protobuf reads the graph, the wire scan only finds large payloads, the UTF-8
check is protobuf's own, and errors become one line through one formatter."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfix.errors import ModelError, one_line
from onnxfix.io import (
    load_model,
    load_skeleton,
    parse_model_bytes,
    reader,
    save_with_weights,
    wire,
)
from onnxfix.io import validate as validate_mod

FLOAT = TensorProto.FLOAT


def _chain(n: int, weight: int = 16, *, nested: bool = False) -> onnx.ModelProto:
    """x -> n x Add(c_i) -> y, c_i float32[weight]; nested puts the chain in an If branch."""
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        inits.append(numpy_helper.from_array(np.full(weight, i, np.float32), f"c{i}"))
        nodes.append(helper.make_node("Add", [prev, f"c{i}"], [f"v{i}"], name=f"n{i}"))
        prev = f"v{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    vi = [helper.make_tensor_value_info("x", FLOAT, ["batch", weight]),
          helper.make_tensor_value_info("y", FLOAT, ["batch", weight])]
    if nested:
        branch = helper.make_graph(nodes, "branch", [], [vi[1]])
        cond = numpy_helper.from_array(np.array(True), "cond")
        node = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch,
                                else_branch=branch)
        graph = helper.make_graph([node], "g", [vi[0]], [vi[1]], [cond, *inits])
    else:
        graph = helper.make_graph(nodes, "g", [vi[0]], [vi[1]], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_small_initializers_are_never_decoded_by_the_scan(tmp_path, monkeypatch):
    """Only records that can hold a payload over inline_limit are looked into."""
    path = tmp_path / "m.onnx"
    model = _chain(50, weight=16)  # 64-byte payloads
    model.graph.initializer.append(numpy_helper.from_array(np.ones(1024, np.float32), "big"))
    onnx.save(model, str(path))
    decoded = []
    real = reader._stub_tensor
    monkeypatch.setattr(reader, "_stub_tensor", lambda src, pos, *a: decoded.append(pos)
                        or real(src, pos, *a))
    with load_skeleton(path) as sk:
        assert list(sk.stubs) == ["big"]
        assert len(decoded) == 1
        loaded = load_model(path)
    # every small tensor parsed by protobuf, the big one read back from the file
    assert loaded.graph.node == model.graph.node
    assert [(t.name, numpy_helper.to_array(t).tolist()) for t in loaded.graph.initializer] == [
        (t.name, numpy_helper.to_array(t).tolist()) for t in model.graph.initializer]


@pytest.mark.parametrize("nested", [False, True])
def test_skeleton_round_trip_is_byte_faithful(tmp_path, nested):
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    model = _chain(30, weight=512, nested=nested)  # 2 KiB payloads: all stubbed
    onnx.save(model, str(path))
    with load_skeleton(path) as sk:
        assert len(sk.stubs) == 30
        assert sk.locations == {"m.onnx"}
        saved = save_with_weights(sk.model, sk, out)
    assert saved.layout == "embedded"
    assert onnx.load(str(out)) == model


def test_a_malformed_small_initializer_is_named_precisely(tmp_path):
    """protobuf refuses the file; the thorough scan then says what is wrong and where."""
    model = _chain(3)
    data = bytearray(model.SerializeToString())
    raw = numpy_helper.from_array(np.full(16, 1, np.float32)).raw_data
    at = bytes(data).index(raw)
    data[at - 1] = 100  # c1's raw_data now claims 100 bytes, past its tensor's end
    path = tmp_path / "bad.onnx"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError) as info:
        load_skeleton(path)
    assert str(info.value) == (f"{path}: not a valid ONNX protobuf (malformed: field 9 at byte "
                               f"{at - 2} runs past the end of its message (needs 102 bytes, "
                               f"66 left))")


def _with_bad_text(field: str) -> bytes:
    model = _chain(2, nested=True)
    branch = model.graph.node[0].attribute[0].g
    if field == "subgraph node name":
        branch.node[1].name = "QQ"
    elif field == "dim_param":
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "QQ"
    elif field == "metadata value":
        helper.set_model_props(model, {"k": "QQ"})
    else:  # an attribute's string
        branch.node.append(helper.make_node("Cast", ["v1"], ["z"], name="c", to=1))
        branch.node[-1].attribute[0].s = b"QQ"
    return model.SerializeToString().replace(b"QQ", b"\xff\xfe")


@pytest.mark.parametrize("field,full_name", [
    ("subgraph node name", "onnx.NodeProto.name"),
    ("dim_param", "onnx.TensorShapeProto.Dimension.dim_param"),
    ("metadata value", "onnx.StringStringEntryProto.value"),
])
def test_text_that_is_not_utf8_is_refused_wherever_it_is(field, full_name):
    assert validate_mod._utf8_mirror() is not None  # protobuf's own check is in use
    with pytest.raises(ModelError) as info:
        parse_model_bytes(_with_bad_text(field), "m")
    assert str(info.value) == f"m: a text field ({full_name}) is not valid UTF-8"


def test_the_python_walk_finds_what_the_mirror_finds(monkeypatch):
    """Without the mirror (an older protobuf) the refusal is the same."""
    data = _with_bad_text("subgraph node name")
    monkeypatch.setattr(validate_mod, "_utf8_mirror", lambda: None)
    with pytest.raises(ModelError, match=r"^m: a text field \(onnx.NodeProto.name\) is not "
                                         r"valid UTF-8$"):
        parse_model_bytes(data, "m")


def test_valid_text_passes_the_mirror():
    model = _chain(2, nested=True)
    helper.set_model_props(model, {"k": "é→"})
    assert parse_model_bytes(model.SerializeToString(), "m") == model


def test_one_line():
    assert one_line(ValueError("first\n\n  second   line\n")) == "first second line"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("x" * 400)) == "x" * 300
    assert one_line(RuntimeError("abcdef"), limit=3) == "abc"
    assert one_line(RuntimeError("x " * 400), limit=None) == ("x " * 400).strip()


def test_fields_reads_a_file_through_windows(tmp_path, monkeypatch):
    """A graph larger than the read window walks the same as in memory."""
    path = tmp_path / "m.onnx"
    model = _chain(400)
    onnx.save(model, str(path))
    monkeypatch.setattr(wire.FileBytes, "WINDOW", 64)
    data = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        from_file = list(wire.fields(wire.FileBytes(fd, len(data)), 0, len(data)))
    finally:
        os.close(fd)
    assert from_file == list(wire.fields(wire.MemoryBytes(data), 0, len(data)))
    with load_skeleton(path) as sk:
        assert sk.model == model


def test_protobuf_limit_is_one_constant():
    from onnxfix.io import writer

    assert wire.PROTOBUF_LIMIT == 2**31 - 1
    assert not hasattr(writer, "EMBED_LIMIT") and not hasattr(validate_mod, "PROTOBUF_LIMIT")


def test_reader_refuses_a_truncated_graph_in_one_line(tmp_path: Path):
    data = _chain(20).SerializeToString()
    path = tmp_path / "t.onnx"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelError) as info:
        load_skeleton(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}: ")


def test_an_input_location_that_looks_like_a_marked_stub_is_kept(tmp_path):
    """Stubs carry '#<file name>' until the parse; an input's own external tensor that says
    '#m.onnx' must keep it (and be refused as missing), not be read from m.onnx itself."""
    model = _chain(2, weight=512)
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "#m.onnx"), ("offset", "0"), ("length", "2048")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as info:
        load_skeleton(path)
    assert str(info.value) == (f"{path} (graph initializer 'c0'): external data '#m.onnx': "
                               "No such file or directory")
    (tmp_path / "#m.onnx").write_bytes(np.full(512, 7, np.float32).tobytes())
    with load_skeleton(path) as sk:
        assert sk.locations == {"#m.onnx", "m.onnx"}
        assert sk.stubs == {"c1": sk.stubs["c1"]}
    loaded = load_model(path)
    assert numpy_helper.to_array(loaded.graph.initializer[0]).tolist() == [7.0] * 512
    assert numpy_helper.to_array(loaded.graph.initializer[1]).tolist() == [1.0] * 512


def test_open_model_runs_the_checker_once_on_bytes(tmp_path, monkeypatch):
    """The checker and the UTF-8 check run on the serialized skeleton, before the parse."""
    path = tmp_path / "m.onnx"
    onnx.save(_chain(3, weight=512), str(path))
    seen = []
    real = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model",
                        lambda m, *a, **k: seen.append(type(m).__name__) or real(m, *a, **k))
    with reader.open_model(path) as sk:
        assert len(sk.stubs) == 3
    assert seen == ["bytes"]


def test_a_model_the_checker_refuses_is_refused_in_the_same_words(tmp_path):
    model = _chain(2)
    model.graph.node[1].input[0] = "nobody"  # a tensor nobody produces
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as info:
        reader.open_model(path)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        expected = one_line(e)
    assert str(info.value) == f"{path}: invalid ONNX model: {expected}"


# -- issue 10: a small file of small tensors is its own skeleton, parsed once by protobuf ----

def test_a_small_file_without_large_payloads_skips_the_field_scan(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    model = _chain(200, weight=16, nested=True)
    onnx.save(model, str(path))

    def refuse(*args, **kwargs):
        raise AssertionError("the field scan ran")

    monkeypatch.setattr(reader, "_scan_model", refuse)
    with load_skeleton(path) as sk:
        assert sk.stubs == {} and sk.model == model


def _saved_with_big(tmp_path) -> tuple[Path, onnx.ModelProto]:
    """A 30-node chain of small tensors and one 1200-byte payload ("big"), saved."""
    path = tmp_path / "m.onnx"
    model = _chain(30, weight=16)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(300, np.float32), "big"))
    onnx.save(model, str(path))
    return path, model


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} ran")
    return refuse


def test_a_file_with_a_large_payload_is_scanned_without_a_whole_parse(tmp_path, monkeypatch):
    """The headers of the graph's first fields show the large payload: the file is not
    parsed (and held) whole before the scan."""
    path, model = _saved_with_big(tmp_path)
    monkeypatch.setattr(reader, "_parse_whole", _refuse("the whole parse"))
    with load_skeleton(path) as sk:
        assert list(sk.stubs) == ["big"]
        assert sk.model.graph.node == model.graph.node


def test_a_long_record_without_raw_data_is_still_parsed_whole(tmp_path, monkeypatch):
    """An initializer over 1 KB held in float_data has no payload to leave in the file: the
    whole parse is the skeleton, and it does not look at the initializers again."""
    path = tmp_path / "m.onnx"
    model = _chain(30, weight=16)
    model.graph.initializer.append(helper.make_tensor("big", FLOAT, [300], [1.0] * 300))
    onnx.save(model, str(path))
    monkeypatch.setattr(reader, "_scan_model", _refuse("the field scan"))
    with load_skeleton(path) as sk:
        assert sk.stubs == {} and sk.model == model


@pytest.mark.parametrize("peek", [0, 5])
def test_a_graph_with_more_fields_than_the_peek_is_decided_by_the_parse(tmp_path, monkeypatch,
                                                                       peek):
    """Past PEEK_FIELDS the headers are not read further: a large payload among the later
    fields is found after the whole parse, as before."""
    path, model = _saved_with_big(tmp_path)
    monkeypatch.setattr(reader, "PEEK_FIELDS", peek)
    with load_skeleton(path) as sk:
        assert list(sk.stubs) == ["big"]
    fd = os.open(path, os.O_RDONLY)
    try:
        assert reader._peek_payloads(wire.FileBytes(fd, path.stat().st_size), 1024) is None
    finally:
        os.close(fd)


@pytest.mark.parametrize("limit", [0, reader.WHOLE_PARSE_LIMIT])
def test_the_whole_parse_and_the_scan_give_the_same_skeleton(tmp_path, monkeypatch, limit):
    """Above WHOLE_PARSE_LIMIT (here: every file when it is 0) the scan decides, as before."""
    path, model = _saved_with_big(tmp_path)
    monkeypatch.setattr(reader, "WHOLE_PARSE_LIMIT", limit)
    with load_skeleton(path) as sk:
        assert list(sk.stubs) == ["big"]  # a payload over 1 KB stays in the file either way
        assert [t.name for t in sk.model.graph.initializer] == [f"c{i}" for i in range(30)] + [
            "big"]
        assert sk.model.graph.initializer[-1].data_location == TensorProto.EXTERNAL
        assert sk.model.graph.node == model.graph.node
    loaded = load_model(path)
    assert [(t.name, numpy_helper.to_array(t).tolist()) for t in loaded.graph.initializer] == [
        (t.name, numpy_helper.to_array(t).tolist()) for t in model.graph.initializer]


@pytest.mark.parametrize("where", ["raw_data", "float_data"])
def test_the_whole_parse_is_the_skeleton_only_without_a_payload_over_the_limit(tmp_path, where):
    """Past what the header peek sees (PEEK_FIELDS), the whole parse looks at every
    initializer's raw_data: one over inline_limit makes the field scan stub it; a tensor
    as large held in float_data is no payload (kept parsed, as before)."""
    path = tmp_path / "m.onnx"
    model = _chain(reader.PEEK_FIELDS // 2 + 8, weight=4)
    big = numpy_helper.from_array(np.ones(1024, np.float32), "big")
    if where == "float_data":
        big.ClearField("raw_data")
        big.float_data.extend([1.0] * 1024)
    model.graph.initializer.append(big)
    onnx.save(model, str(path))
    with load_skeleton(path) as sk:
        assert list(sk.stubs) == (["big"] if where == "raw_data" else [])
        assert sk.model.graph.initializer[-1] == big or where == "raw_data"

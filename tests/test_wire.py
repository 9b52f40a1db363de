"""wire: skeletons that point into the source file, and writes that stream the weights.

The goal (scripts/bench.py): big models rewritten at I/O speed, weights never parsed in Python.
DESIGN.md "Safety": refused external-data locations, malformed wire data as a one-line
ModelError, atomic output with no leftovers, the input never modified.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxfix.errors import ModelError, UsageError
from onnxfix.io import kernel_copy, reader, wire
from onnxfix.io.reader import load_skeleton
from onnxfix.io.writer import save_with_weights

BIG = 1024  # 1024 x 1024 float32 = 4 MiB per weight


def _varint(n: int) -> bytes:
    return wire.varint(n)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _sess(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _chain(n: int, size: int, *, prefix: str = "w", seed: int = 0) -> onnx.ModelProto:
    """x[N, size] -> n x (MatMul by a weight, RandomNormalLike added) -> y; plus a small bias."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i in range(n):
        # names of different lengths put the payloads at odd, unaligned offsets
        name = f"{prefix}{i}" + "_" * (i % 3)
        w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        nodes.append(helper.make_node("MatMul", [prev, name], [f"h{i}"], name=f"mm{i}"))
        prev = f"h{i}"
    inits.append(numpy_helper.from_array(np.full((4,), 0.5, np.float32)[:1], "bias"))
    nodes.append(helper.make_node("Add", [prev, "bias"], ["y"], name="add_bias"))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _modify(model: onnx.ModelProto) -> onnx.ModelProto:
    """The trivial rewrite: y2 = y * two, with a new small initializer and a new node."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    out.graph.node.append(helper.make_node("Mul", ["y", "two"], ["y2"], name="times_two"))
    out.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    return out


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _assert_same(got: onnx.ModelProto, want: onnx.ModelProto) -> None:
    """Same graph and same initializer contents (external data loaded by onnx.load)."""
    a, b = _arrays(got), _arrays(want)
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    for m in (got, want):
        del m.graph.initializer[:]
    assert got == want


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """8 initializers of 4 MiB each, saved the ordinary way."""
    path = tmp_path_factory.mktemp("big") / "model.onnx"
    onnx.save(_chain(8, BIG), str(path))
    return path


# -- the fast path --------------------------------------------------------------------------

def test_skeleton_stubs_point_into_the_source(big):
    with load_skeleton(big) as sk:
        assert len(sk.stubs) == 8 and "bias" not in sk.stubs
        assert sk.model.ByteSize() < 10_000
        data = big.read_bytes()
        original = onnx.load(str(big))
        for t in original.graph.initializer:
            if t.name in sk.stubs:
                offset, length = sk.stubs[t.name]
                assert data[offset:offset + length] == t.raw_data
        stub = next(t for t in sk.model.graph.initializer if t.name == "w0")
        assert stub.data_location == TensorProto.EXTERNAL
        assert {e.key: e.value for e in stub.external_data} == {
            "location": "model.onnx", "offset": str(sk.stubs["w0"][0]),
            "length": str(BIG * BIG * 4)}
        assert list(stub.dims) == [BIG, BIG] and stub.data_type == TensorProto.FLOAT
        # the stubs' structure passes onnx's checker without touching the weights
        onnx.checker.check_model(reader.checkable(sk.model), full_check=True)


def test_skeleton_runs_in_ort_straight_from_the_original_file(big):
    """ORT reads the payloads at their offsets in the .onnx, unaligned ones included."""
    with load_skeleton(big) as sk:
        offsets = [o for o, _ in sk.stubs.values()]
        assert any(o % 4096 for o in offsets)
        assert any(o % 4 for o in offsets)  # not even float aligned
        skel = big.parent / "skeleton.onnx"
        onnx.save(sk.model, str(skel))
    try:
        assert skel.stat().st_size < 10_000
        x = np.random.default_rng(1).standard_normal((3, BIG)).astype(np.float32)
        want = _sess(big).run(None, {"x": x})[0]
        got = _sess(skel).run(None, {"x": x})[0]
        assert np.array_equal(got, want)
    finally:
        skel.unlink()


@pytest.mark.parametrize("size", [17, 128])
def test_ort_reads_small_payloads_at_any_offset(tmp_path, size):
    path = tmp_path / "m.onnx"
    onnx.save(_chain(3, size), str(path))
    with load_skeleton(path, inline_limit=64) as sk:
        assert len(sk.stubs) == 3 and len({o % 8 for o, _ in sk.stubs.values()}) > 1
        x = np.random.default_rng(3).standard_normal((2, size)).astype(np.float32)
        want = _sess(path).run(None, {"x": x})[0]
        # from memory: the session options point ORT at the source folder
        opts = reader.session_options(sk)
        opts.log_severity_level = 3
        got = ort.InferenceSession(_modify(sk.model).SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
        assert np.array_equal(got, want)


def test_roundtrip_embedded_with_a_modification(big, tmp_path):
    with load_skeleton(big) as sk:
        model = _modify(sk.model)
        out = tmp_path / "out.onnx"
        saved = save_with_weights(model, sk, out)
    assert saved.layout == "embedded" and saved.data_path is None
    assert saved.model_bytes == out.stat().st_size
    assert _names(tmp_path) == ["out.onnx"]
    reference = _modify(onnx.load(str(big)))
    got = onnx.load(str(out))
    assert got == reference  # the same message, weights included
    x = np.random.default_rng(2).standard_normal((2, BIG)).astype(np.float32)
    y = _sess(big).run(None, {"x": x})[0]
    y_out, y2 = _sess(out).run(["y", "y2"], {"x": x})
    assert np.array_equal(y_out, y) and np.array_equal(y2, 2 * y)


def test_renamed_and_removed_stubs(big, tmp_path):
    """Stubs are recognised by where they point, not by name; removed ones are not written."""
    with load_skeleton(big) as sk:
        model = onnx.ModelProto()
        model.CopyFrom(sk.model)
        g = model.graph
        g.initializer[0].name = "renamed"
        g.node[0].input[1] = "renamed"
        # drop the last MatMul and its weight: the chain ends at h6
        del g.initializer[7]
        del g.node[7]
        g.node[-1].input[0] = "h6"
        save_with_weights(model, sk, tmp_path / "out.onnx")
    got = _arrays(onnx.load(str(tmp_path / "out.onnx")))
    want = _arrays(onnx.load(str(big)))
    assert "w7_" not in got and np.array_equal(got["renamed"], want["w0"])


def test_external_output_above_the_limit(big, tmp_path, monkeypatch):
    monkeypatch.setattr(wire, "PROTOBUF_LIMIT", 1_000_000)
    out = tmp_path / "out.onnx"
    with load_skeleton(big) as sk:
        saved = save_with_weights(_modify(sk.model), sk, out)
    assert saved.layout == "external" and saved.data_path == tmp_path / "out.onnx.data"
    assert _names(tmp_path) == ["out.onnx", "out.onnx.data"]
    assert out.stat().st_size < 10_000
    refs = onnx.load(str(out), load_external_data=False).graph.initializer
    for t in refs:
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            assert info["location"] == "out.onnx.data" and int(info["offset"]) % 4096 == 0
    _assert_same(onnx.load(str(out)), _modify(onnx.load(str(big))))
    x = np.ones((2, BIG), np.float32)
    assert np.array_equal(_sess(out).run(["y"], {"x": x})[0], _sess(big).run(None, {"x": x})[0])


@pytest.mark.parametrize("methods", [("readwrite",), ("sendfile", "readwrite")])
def test_copy_fallbacks_write_the_same_bytes(big, tmp_path, monkeypatch, methods):
    with load_skeleton(big) as sk:
        save_with_weights(sk.model, sk, tmp_path / "fast.onnx")
        monkeypatch.setattr(kernel_copy, "COPY_METHODS", methods)
        monkeypatch.setattr(kernel_copy, "COPY_CHUNK", 1 << 20)
        save_with_weights(sk.model, sk, tmp_path / "slow.onnx")
    assert (tmp_path / "fast.onnx").read_bytes() == (tmp_path / "slow.onnx").read_bytes()


def test_copy_file_range_unsupported_falls_back(big, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device")

    with load_skeleton(big) as sk:
        monkeypatch.setattr(os, "copy_file_range", refuse)
        save_with_weights(sk.model, sk, tmp_path / "out.onnx")
    assert onnx.load(str(tmp_path / "out.onnx")) == onnx.load(str(big))


def test_overwrite_the_input_in_place(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_chain(3, 64), str(path))
    original = onnx.load(str(path))
    with load_skeleton(path) as sk:
        save_with_weights(_modify(sk.model), sk, path)
    assert _names(tmp_path) == ["m.onnx"]
    assert onnx.load(str(path)) == _modify(original)


def test_a_failed_write_leaves_nothing(big, tmp_path, monkeypatch):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")

    def broken(src, dst, offset, length):
        os.write(dst, b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kernel_copy, "copy_range", broken)
    with load_skeleton(big) as sk, pytest.raises(UsageError, match="No space left"):
        save_with_weights(sk.model, sk, out)
    assert _names(tmp_path) == ["out.onnx"] and out.read_bytes() == b"previous"


def test_source_changed_after_loading_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_chain(2, 64), str(path))
    with load_skeleton(path) as sk:
        with open(path, "r+b") as f:
            f.seek(0, 2)
            f.write(b"\0")
        with pytest.raises(ModelError, match="changed"):
            save_with_weights(sk.model, sk, tmp_path / "out.onnx")
    assert _names(tmp_path) == ["m.onnx"]


def test_typed_fields_and_subgraph_initializers_are_parsed_normally(tmp_path):
    vals = np.arange(2000, dtype=np.float32)
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [2000], vals.tolist(), raw=False)
    big_raw = numpy_helper.from_array(np.arange(2000, dtype=np.float32) * 3, "inner")
    then = helper.make_graph([helper.make_node("Identity", ["inner"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2000])],
                             [big_raw])
    other = helper.make_graph([helper.make_node("Identity", ["typed"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2000])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2000])], [typed])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with load_skeleton(path) as sk:
        assert sk.stubs == {}
        save_with_weights(sk.model, sk, tmp_path / "out.onnx")
    assert onnx.load(str(tmp_path / "out.onnx")) == model


# -- inputs with external data ---------------------------------------------------------------

def _save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save turns the tensors it writes into external references
    onnx.save(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=1024)


def test_external_input_stays_external_beside_the_output(tmp_path):
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    model = _chain(3, 128)
    (src / "weights").mkdir()
    _save_external(model, src / "m.onnx", "weights/m.bin")
    with load_skeleton(src / "m.onnx") as sk:
        assert sk.stubs == {}
        skel = src / "skeleton.onnx"
        onnx.save(sk.model, str(skel))  # ORT runs it: the external refs are kept as they were
        x = np.ones((2, 128), np.float32)
        assert np.array_equal(_sess(skel).run(None, {"x": x})[0],
                              _sess(src / "m.onnx").run(None, {"x": x})[0])
        saved = save_with_weights(_modify(sk.model), sk, dst / "out.onnx")
        assert saved.layout == "external"
        assert _names(dst) == ["out.onnx", "out.onnx.data"]
        _assert_same(onnx.load(str(dst / "out.onnx")), _modify(model))
        one = save_with_weights(sk.model, sk, dst / "one.onnx", layout="embedded")
        assert one.layout == "embedded" and not (dst / "one.onnx.data").exists()
        assert onnx.load(str(dst / "one.onnx")) == model


def test_external_input_rewritten_in_place_over_its_own_data_file(tmp_path):
    """The output's data file would have the input's data file name: the input still reads it,
    so the new weights go to `m.onnx.1.data` and the old file is left, never half-replaced."""
    path = tmp_path / "m.onnx"
    model = _chain(3, 128)
    _save_external(model, path, "m.onnx.data")
    old_data = (tmp_path / "m.onnx.data").read_bytes()
    with load_skeleton(path) as sk:
        save_with_weights(_modify(sk.model), sk, path)
    assert _names(tmp_path) == ["m.onnx", "m.onnx.1.data", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").read_bytes() == old_data
    _assert_same(onnx.load(str(path)), _modify(model))
    with load_skeleton(path) as sk:  # a second run in place takes the free name again
        save_with_weights(sk.model, sk, path)
    _assert_same(onnx.load(str(path)), _modify(model))


# -- hostile input ----------------------------------------------------------------------------

def _assert_refused(path: Path, match: str | None = None) -> str:
    folder = path.parent
    before = _names(folder)
    with pytest.raises(ModelError, match=match) as info, load_skeleton(path) as sk:
        save_with_weights(sk.model, sk, folder / "out.onnx")  # pragma: no cover
    text = str(info.value)
    assert text and "\n" not in text and "Traceback" not in text
    assert _names(folder) == before
    return text


def test_missing_empty_and_folder_inputs(tmp_path):
    _assert_refused(tmp_path / "nope.onnx", "no such file")
    (tmp_path / "empty.onnx").write_bytes(b"")
    _assert_refused(tmp_path / "empty.onnx", "empty")
    with pytest.raises(ModelError, match="folder"):
        load_skeleton(tmp_path)


def test_truncated_files(tmp_path):
    data = _chain(2, 64).SerializeToString()
    path = tmp_path / "t.onnx"
    for cut in (1, 2, 3, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        _assert_refused(path)


def test_huge_and_truncated_length_fields(tmp_path):
    path = tmp_path / "h.onnx"
    path.write_bytes(_varint(7 << 3 | 2) + _varint(2**62) + b"\0" * 16)
    _assert_refused(path, "runs past the end")
    # an initializer claiming more raw_data than its tensor holds
    tensor = _varint(9 << 3 | 2) + _varint(10_000) + b"\0" * 8
    path.write_bytes(_ld(7, _ld(5, tensor)))
    _assert_refused(path, "runs past the end")
    path.write_bytes(_varint(7 << 3 | 2) + b"\xff\xff\xff")
    _assert_refused(path, "truncated varint")
    path.write_bytes(b"\xff" * 12)
    _assert_refused(path, "varint")
    path.write_bytes(b"\x3b\x00")  # wire type 3 (group)
    _assert_refused(path, "wire type")


def test_declared_dims_must_match_the_payload(tmp_path):
    t = numpy_helper.from_array(np.zeros((40, 40), np.float32), "w")
    t.dims[0] = 41
    graph = helper.make_graph([], "g", [], [], [t])
    path = tmp_path / "d.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    _assert_refused(path, "declares dims")


def test_nesting_too_deep(tmp_path):
    graph = b""
    for _ in range(150):  # graph { node { attribute { g: graph } } }
        attr = _ld(1, b"body") + _ld(6, graph)
        graph = _ld(1, _ld(5, attr))
    opset = _ld(8, _varint(2 << 3) + _varint(17))
    path = tmp_path / "deep.onnx"
    path.write_bytes(_varint(1 << 3) + _varint(8) + opset + _ld(7, graph))
    _assert_refused(path, "nesting too deep")


def test_not_a_model(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(_varint(1 << 3) + _varint(8))  # a valid message without a graph
    _assert_refused(path, "no graph")


def _with_external(tmp_path: Path, location: str, *, offset: int = 0,
                   length: int | None = 64 * 4) -> Path:
    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([64])
    t.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset)}
    if length is not None:
        entries["length"] = str(length)
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], [t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def test_external_locations_that_are_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 256)
    _assert_refused(_with_external(tmp_path, str(outside)), "absolute")
    _assert_refused(_with_external(tmp_path, "../outside.bin"), "leaves the model folder")
    _assert_refused(_with_external(tmp_path, "a/../../outside.bin"), "leaves the model folder")
    _assert_refused(_with_external(tmp_path, "C:\\w.bin"), "absolute")
    model = tmp_path / "model"
    (model / "link.bin").symlink_to(outside)
    _assert_refused(_with_external(tmp_path, "link.bin"), "symlink")
    (model / "dirlink").symlink_to(tmp_path)
    _assert_refused(_with_external(tmp_path, "dirlink/outside.bin"), "symlink")
    os.link(outside, model / "hard.bin")
    _assert_refused(_with_external(tmp_path, "hard.bin"), "hard links")
    _assert_refused(_with_external(tmp_path, "missing.bin"), "No such file")
    (model / "sub").mkdir()
    _assert_refused(_with_external(tmp_path, "sub"), "not a regular file")
    os.mkfifo(model / "fifo.bin")
    _assert_refused(_with_external(tmp_path, "fifo.bin"), "not a regular file")


def test_external_bounds_are_checked(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"\0" * 256)
    _assert_refused(_with_external(tmp_path, "w.bin", offset=8), "outside the file")
    _assert_refused(_with_external(tmp_path, "w.bin", length=10**12), "outside the file")
    _assert_refused(_with_external(tmp_path, "w.bin", offset=-4), "outside the file")
    _assert_refused(_with_external(tmp_path, "w.bin", length=128), "declares dims")
    path = _with_external(tmp_path, "w.bin", length=None)  # length defaults to the rest
    with load_skeleton(path) as sk:
        save_with_weights(sk.model, sk, path.parent / "out.onnx")
    assert np.array_equal(numpy_helper.to_array(
        onnx.load(str(path.parent / "out.onnx")).graph.initializer[0]), np.zeros(64, np.float32))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=400))
def test_random_bytes_are_a_model_error_or_a_model(tmp_path, blob):
    path = tmp_path / "r.onnx"
    path.write_bytes(blob)
    try:
        load_skeleton(path).close()
    except ModelError as e:
        assert "\n" not in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_models_are_a_model_error_or_a_model(tmp_path, data):
    good = bytearray(_chain(2, 24, seed=3).SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    path = tmp_path / "c.onnx"
    path.write_bytes(bytes(good))
    try:
        with load_skeleton(path, inline_limit=64) as sk:
            save_with_weights(sk.model, sk, tmp_path / "out.onnx")
    except ModelError as e:
        assert "\n" not in str(e)
    leftovers = [n for n in _names(tmp_path) if n.endswith(".tmp")]
    assert not leftovers


def test_strings_that_are_not_utf8(tmp_path):
    opset = _ld(8, _varint(2 << 3) + _varint(17))
    head = _varint(1 << 3) + _varint(8) + opset
    tensor = (_ld(8, b"\xff\xfe") + _varint(1 << 3) + _varint(512) + _varint(2 << 3)
              + _varint(1) + _ld(9, bytes(2048)))
    path = tmp_path / "u.onnx"
    path.write_bytes(head + _ld(7, _ld(5, tensor)))
    _assert_refused(path, "UTF-8")
    tensor = (_ld(8, b"w") + _varint(14 << 3) + _varint(1)
              + _ld(13, _ld(1, b"location") + _ld(2, b"\xff.bin")))
    path.write_bytes(head + _ld(7, _ld(5, tensor)))
    _assert_refused(path, "UTF-8")

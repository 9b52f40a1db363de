"""The models scripts/bench.py measures, built from onnx.helper (run as a subprocess).

    python scripts/bench_models.py KIND PATH N

KIND and N:
  mlp N      N layers of 1024x1024 float32 MatMul, each + RandomNormalLike (N=48: 192 MiB);
  mlp-wide N N layers of 2048x2048 float32 MatMul, each + RandomNormalLike (N=64: 1 GiB);
  chain N    an N-node Add/Mul chain with [16] float32 initializers and one RandomNormalLike;
  randn N    N RandomNormalLike draws, each added to the running value (2N nodes);
  vae N      a conv VAE with one RandomNormalLike of N x 256 x 256 elements (N=4: 256k);
  tiny N     x -> RandomNormalLike -> Add (N ignored).
Every model has opset 17 and a symbolic batch dim except the VAE (batch 1, so the draw has
exactly the stated size). The file is written to PATH.tmp and renamed, so a cache never holds
half a model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def _save(nodes, inputs, outputs, inits, path: Path) -> None:
    graph = helper.make_graph(nodes, "bench", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def _io(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, FLOAT, shape)


def mlp(path: Path, layers: int, size: int = 1024) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((size, size), dtype=np.float32) / np.float32(np.sqrt(size))
        inits.append(numpy_helper.from_array(w, f"layer{i}.weight"))
        out = f"a{i}" if i < layers - 1 else "y"
        nodes += [
            helper.make_node("MatMul", [prev, f"layer{i}.weight"], [f"h{i}"], name=f"mm{i}"),
            helper.make_node("RandomNormalLike", [f"h{i}"], [f"eps{i}"], name=f"randn{i}",
                             scale=0.01),
            helper.make_node("Add", [f"h{i}", f"eps{i}"], [out], name=f"add{i}"),
        ]
        prev = out
    _save(nodes, [_io("x", ["batch", size])], [_io("y", ["batch", size])], inits, path)


def chain(path: Path, count: int) -> None:
    """count nodes in total: Mul/Add by [16] constants; in the middle, y + RandomNormalLike(y)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    draw = count // 2
    for i in range(count):
        out = f"v{i}" if i < count - 1 else "y"
        if i == draw:  # the draw: its output is the next node's addend, the chain goes on
            nodes.append(helper.make_node("RandomNormalLike", [prev], ["eps"], name="randn",
                                          scale=0.01))
            continue
        if i == draw + 1:
            nodes.append(helper.make_node("Add", [prev, "eps"], [out], name=f"n{i}"))
        else:
            c = np.asarray(1.0 + 1e-3 * rng.standard_normal(16), np.float32)
            inits.append(numpy_helper.from_array(c, f"c{i}"))
            nodes.append(helper.make_node("Add" if i % 2 else "Mul", [prev, f"c{i}"], [out],
                                          name=f"n{i}"))
        prev = out
    _save(nodes, [_io("x", ["batch", 16])], [_io("y", ["batch", 16])], inits, path)


def randn(path: Path, draws: int) -> None:
    nodes, prev = [], "x"
    for i in range(draws):
        out = f"h{i}" if i < draws - 1 else "y"
        nodes += [
            helper.make_node("RandomNormalLike", [prev], [f"eps{i}"], name=f"randn{i}",
                             scale=0.01),
            helper.make_node("Add", [prev, f"eps{i}"], [out], name=f"add{i}"),
        ]
        prev = out
    _save(nodes, [_io("x", ["batch", 16])], [_io("y", ["batch", 16])], [], path)


def vae(path: Path, channels: int, side: int = 256) -> None:
    """Encoder conv -> (mu, logvar) -> mu + exp(logvar / 2) * N(0, 1) -> decoder conv."""
    rng = np.random.default_rng(0)
    inits = []

    def conv(name: str, src: str, cin: int, cout: int) -> onnx.NodeProto:
        w = rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) * np.float32(0.1)
        inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.bias"))
        return helper.make_node("Conv", [src, f"{name}.weight", f"{name}.bias"], [name],
                                name=name, pads=[1, 1, 1, 1])

    inits.append(numpy_helper.from_array(np.asarray(0.5, np.float32), "half"))
    nodes = [
        conv("enc", "x", 3, 16), helper.make_node("Relu", ["enc"], ["enc_act"]),
        conv("mu", "enc_act", 16, channels), conv("logvar", "enc_act", 16, channels),
        helper.make_node("Mul", ["logvar", "half"], ["half_logvar"]),
        helper.make_node("Exp", ["half_logvar"], ["std"]),
        helper.make_node("RandomNormalLike", ["mu"], ["eps"], name="reparam_noise"),
        helper.make_node("Mul", ["std", "eps"], ["scaled"]),
        helper.make_node("Add", ["mu", "scaled"], ["z"]),
        conv("dec", "z", channels, 16), helper.make_node("Relu", ["dec"], ["dec_act"]),
        conv("out", "dec_act", 16, 3), helper.make_node("Sigmoid", ["out"], ["y"]),
    ]
    _save(nodes, [_io("x", [1, 3, side, side])], [_io("y", [1, 3, side, side])], inits, path)


def tiny(path: Path, _: int = 0) -> None:
    randn(path, 1)


KINDS = {"mlp": mlp, "mlp-wide": lambda p, n: mlp(p, n, 2048), "chain": chain, "randn": randn,
         "vae": vae, "tiny": tiny}

if __name__ == "__main__":
    kind, target, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    KINDS[kind](target, n)

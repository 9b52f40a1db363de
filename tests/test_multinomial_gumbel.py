"""Multinomial by Gumbel-max (multinomial="gumbel" / --multinomial gumbel): the graph, its
noise, the check conditioning on it, and the distribution test covering it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import session
from onnx import TensorProto, helper
from typer.testing import CliRunner

import onnxfix
from onnxfix.cli import app
from onnxfix.errors import ParityError, UsageError
from onnxfix.ops import MultinomialGumbelOp


def multinomial(classes, samples: int, draw=TensorProto.INT64) -> onnx.ModelProto:
    node = helper.make_node("Multinomial", ["logits"], ["y"], sample_size=samples, dtype=draw,
                            name="sampler")
    graph = helper.make_graph(
        [node], "head", [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                       ["batch", classes])],
        [helper.make_tensor_value_info("y", draw, ["batch", samples])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _dims(vi) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _tested(report) -> list[tuple[str, str, bool]]:
    return [(d.op_type, d.against, d.passed) for d in report.parity.distributions]


def test_gumbel_form_is_one_add_and_an_argmax_over_noise_per_sample_and_class():
    new, report = onnxfix.rewrite(multinomial(10, 3), multinomial="gumbel")
    assert [n.op_type for n in new.graph.node] == ["Constant", "Unsqueeze", "Add", "ArgMax"]
    noise = new.graph.input[1]
    assert _dims(noise) == ["batch", 3, 10]
    assert noise.doc_string.startswith("onnxfix noise input (gumbel)")
    assert report.nodes[0].distribution["form"] == "gumbel"
    assert report.parity.status == "passed"
    assert _tested(report) == [("Multinomial", "ideal", True),
                               ("Multinomial", "ideal, class order", True),
                               ("Multinomial", "original", True)]


def test_int32_draws_get_a_cast_and_the_default_stays_the_inverse_cdf():
    new, _ = onnxfix.rewrite(multinomial(6, 2, TensorProto.INT32), multinomial="gumbel")
    assert [n.op_type for n in new.graph.node][-3:] == ["Add", "ArgMax", "Cast"]
    default, _ = onnxfix.rewrite(multinomial(6, 2), check=False)
    assert _dims(default.graph.input[1]) == ["batch", 2]
    assert "Add" not in [n.op_type for n in default.graph.node]


def test_onnxruntime_picks_the_argmax_of_logits_plus_the_fed_gumbel_noise():
    new, _ = onnxfix.rewrite(multinomial(1000, 5), multinomial="gumbel", check=False)
    feeds = onnxfix.noise_feeds(new, dims={"batch": 3}, seed=4)
    g = feeds["noise_y"]
    assert g.shape == (3, 5, 1000) and g.dtype == np.float32
    assert abs(float(g.mean()) - np.euler_gamma) < 0.02  # standard Gumbel: mean 0.5772
    logits = np.random.default_rng(1).normal(0, 3, (3, 1000)).astype(np.float32)
    got = session(new).run(None, {"logits": logits, **feeds})[0]
    np.testing.assert_array_equal(got, np.argmax(logits[:, None, :] + g, axis=2))


@pytest.mark.parametrize("logits", [
    np.zeros((2, 50), np.float32),                                  # every class ties
    np.tile(np.float32([0, -np.inf, 3, 3 + 2e-7, 1e4]), (2, 1)),  # -inf and ulp-close classes
    np.random.default_rng(2).normal(0, 20, (2, 300)).astype(np.float32)])
def test_standardized_noise_reproduces_every_sample_in_onnxruntime(logits):
    spec = MultinomialGumbelOp()
    rng = np.random.default_rng(7)
    g = rng.gumbel(size=(logits.shape[0], 64, logits.shape[1])).astype(np.float32)
    picks = spec.forward(g, {}, {0: logits})[0]
    noise = spec.standardize({0: picks}, {}, {0: logits}, np.float32)
    assert noise.shape == g.shape and noise.dtype == np.float32
    new, _ = onnxfix.rewrite(multinomial(logits.shape[1], 64), multinomial="gumbel",
                             check=False)
    got = session(new).run(None, {"logits": logits, "noise_y": noise})[0]
    np.testing.assert_array_equal(got, picks)


def test_standardized_noise_follows_the_conditional_law_of_the_losers():
    # given the pick, a loser's perturbed score is a Gumbel truncated below the winner's:
    # with two equal logits, the loser's noise lies below the winner's by |G1 - G2|, whose
    # mean is 2 ln 2 (G1 - G2 is standard logistic)
    spec = MultinomialGumbelOp()
    picks = np.zeros((1, 20000), np.int64)
    noise = spec.standardize({0: picks}, {}, {0: np.zeros((1, 2), np.float32)}, np.float32)
    gap = float((noise[..., 0] - noise[..., 1]).mean())
    assert (noise[..., 0] > noise[..., 1]).all()
    assert abs(gap - 2 * np.log(2)) < 0.05


def test_a_sample_of_a_class_of_probability_zero_cannot_be_conditioned_on():
    from onnxfix.ops import Inconsistent

    logits = np.float32([[0.0, -np.inf]])
    with pytest.raises(Inconsistent, match="probability 0"):
        MultinomialGumbelOp().standardize({0: np.ones((1, 1), np.int64)}, {}, {0: logits},
                                          np.float32)


def test_a_biased_gumbel_transform_fails_the_distribution_test(monkeypatch):
    # noise doubled: it samples softmax(logits / 2), not softmax(logits)
    def doubled(self, b, noise, node, attrs, dt):
        original(self, b, b.op("Add", [noise, noise], "doubled"), node, attrs, dt)

    original = MultinomialGumbelOp.transform
    monkeypatch.setattr(MultinomialGumbelOp, "transform", doubled)
    with pytest.raises(ParityError) as e:
        onnxfix.rewrite(multinomial(200, 4), multinomial="gumbel", check_size=4)
    checks = e.value.report.parity.distributions
    assert [c.against for c in checks if not c.passed][:1] == ["ideal"]


def test_constant_mode_freezes_gumbel_noise_of_the_full_shape():
    new, report = onnxfix.rewrite(multinomial(7, 3), "constant", dims={"batch": 2},
                                  multinomial="gumbel")
    frozen = {i.name: onnx.numpy_helper.to_array(i) for i in new.graph.initializer}
    assert frozen["noise_y"].shape == (2, 3, 7)
    assert report.parity.status == "passed"


def test_an_unknown_form_is_a_usage_error_naming_the_parameter_and_the_flag(tmp_path):
    with pytest.raises(UsageError, match="^multinomial='gumble': choose one of inverse-cdf, "
                                         "gumbel$"):
        onnxfix.rewrite(multinomial(4, 1), multinomial="gumble")
    src = tmp_path / "m.onnx"
    onnx.save(multinomial(4, 1), src)
    runner = CliRunner()
    bad = runner.invoke(app, ["rewrite", str(src), str(tmp_path / "bad.onnx"),
                              "--multinomial", "gumble"])
    assert bad.exit_code == 2
    assert "--multinomial" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.onnx").exists()
    good = runner.invoke(app, ["rewrite", str(src), str(tmp_path / "out.onnx"),
                               "--multinomial", "gumbel", "-q"])
    assert good.exit_code == 0, good.stderr
    assert _dims(onnx.load(tmp_path / "out.onnx").graph.input[1]) == ["batch", 1, 4]

"""Fixtures exported from real library architectures (issue 8), written to fixtures/arch/.

Each case builds a small random-init configuration of a real architecture right after
``torch.manual_seed``, wraps the sampling call it makes in a tiny module and exports it with
the TorchScript exporter and/or the dynamo exporter (opsets 11-18 spread across the cases).
torch, transformers, diffusers and stable-baselines3 are needed here only (the ``fixtures``
extra), never at run time. ``fixtures/arch/cases.json`` tells the tests how to make realistic
inputs for each file; ``fixtures/arch/MANIFEST.md`` records what each file is.

Run through ``python scripts/make_fixtures.py --set arch`` (or ``--set all``).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

# An input's kind tells the tests how to make a realistic value for it.
FLOAT, IDS, MASK = "float", "ids", "mask"


@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple[int, ...]  # the example shape used for export
    kind: str = FLOAT
    dynamic: dict[int, str] = field(default_factory=dict)  # axis -> symbolic dim name
    high: int = 0  # ids are drawn from [0, high)


@dataclass(frozen=True)
class Case:
    """One architecture: how to build it, what it takes, which exporters to use."""

    name: str
    build: Callable[[], nn.Module]
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    # (exporter, opset); "dynamo-static" exports with the example's shapes, no symbolic dims
    exporters: tuple[tuple[str, int], ...]
    source: str  # the library call that draws
    data_dependent: str = "none"  # what in the draw's shape depends on data
    training: bool = False
    script: bool = False  # torch.jit.script the module before the TorchScript export
    # Dims to fix for constant mode (None: the draw shape cannot be fixed by input dims);
    # onnxfix names a Loop's iteration axis Loop_iterations.
    constant_dims: dict[str, int] | None = None

    def example(self) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(7)
        out = []
        for i in self.inputs:
            if i.kind == IDS:
                out.append(torch.randint(0, i.high, i.shape, generator=gen))
            elif i.kind == MASK:
                out.append(torch.ones(i.shape, dtype=torch.long))
            else:
                out.append(torch.randn(i.shape, generator=gen))
        return tuple(out)


# --------------------------------------------------------------------------
# stable-baselines3 policies
# --------------------------------------------------------------------------


class SampledAction(nn.Module):
    """``policy._predict(obs, deterministic=False)``: the action a rollout worker samples."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy._predict(obs, deterministic=False)


def _sb3(algo: str, env_id: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import gymnasium as gym
        from stable_baselines3 import PPO, SAC

        cls = {"ppo": PPO, "sac": SAC}[algo]
        extra = {"buffer_size": 10} if algo == "sac" else {}
        agent = cls("MlpPolicy", gym.make(env_id), policy_kwargs={"net_arch": [16]}, seed=0,
                    device="cpu", **extra)
        return SampledAction(agent.policy)

    return build


# --------------------------------------------------------------------------
# diffusers
# --------------------------------------------------------------------------


class VaeSample(nn.Module):
    """``vae.encode(x).latent_dist.sample()``: the VAE posterior draw of latent diffusion."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8,),
                                 down_block_types=("DownEncoderBlock2D",),
                                 up_block_types=("UpDecoderBlock2D",), layers_per_block=1,
                                 latent_channels=2, norm_num_groups=4, sample_size=8)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample).latent_dist.sample()


class DdpmStep(nn.Module):
    """``DDPMScheduler.step(eps, t, x_t)``: the ancestral step adds variance noise."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler(num_train_timesteps=20)
        self.eps = nn.Conv2d(2, 2, 3, padding=1)  # a stand-in noise-prediction network

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(self.eps(sample), 10, sample).prev_sample


# --------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------


class VitsSpeech(nn.Module):
    """``VitsModel(input_ids, attention_mask)``: MMS-TTS text to waveform, two noise draws."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import VitsConfig, VitsModel

        config = VitsConfig(
            vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            ffn_dim=32, flow_size=8, spectrogram_bins=9, upsample_initial_channel=16,
            upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]], duration_predictor_filter_channels=16,
            duration_predictor_num_flows=1, prior_encoder_num_flows=1,
            prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
            depth_separable_num_layers=1)
        self.vits = VitsModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.vits(input_ids=input_ids, attention_mask=attention_mask)
        return out.waveform, out.sequence_lengths


class Gpt2TopK(nn.Module):
    """GPT-2 next-token sampling: logits -> topk -> softmax -> multinomial -> token id."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16,
                                             n_layer=1, n_head=2))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1, :]
        top, idx = torch.topk(logits, 5, dim=-1)
        choice = torch.multinomial(torch.softmax(top, dim=-1), 1)
        return torch.gather(idx, 1, choice)


class BertTrain(nn.Module):
    """BertModel in train mode: every dropout draws a mask."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32,
                                         max_position_embeddings=32),
                              add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ConvNextDropPath(nn.Module):
    """ConvNextModel in train mode with stochastic depth (drop path)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import ConvNextConfig, ConvNextModel

        self.net = ConvNextModel(ConvNextConfig(num_channels=3, hidden_sizes=[8, 16],
                                                depths=[1, 1], num_stages=2, drop_path_rate=0.5,
                                                patch_size=2))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixel_values).pooler_output


class SpeechT5Prenet(nn.Module):
    """SpeechT5's speech-decoder prenet: its consistent dropout is on even in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import SpeechT5Config
        from transformers.models.speecht5.modeling_speecht5 import SpeechT5SpeechDecoderPrenet

        self.prenet = SpeechT5SpeechDecoderPrenet(SpeechT5Config(
            hidden_size=16, num_mel_bins=8, speech_decoder_prenet_units=16,
            speaker_embedding_dim=4, max_speech_positions=64))

    def forward(self, input_values: torch.Tensor, speaker_embeddings: torch.Tensor):
        return self.prenet(input_values, speaker_embeddings)


# --------------------------------------------------------------------------
# torch.distributions, scripted control flow, torch.cond
# --------------------------------------------------------------------------


class Distributions(nn.Module):
    """Samplers of torch.distributions, parameters computed from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 24)

    def forward(self, x: torch.Tensor):
        from torch import distributions as d

        loc, raw_scale, low, logits, probs_raw, cat = self.head(x).split(4, dim=-1)
        scale = nn.functional.softplus(raw_scale) + 0.1
        normal = d.Normal(loc, scale).rsample()
        uniform = d.Uniform(low, low + scale).rsample()
        lognormal = d.LogNormal(loc, scale).rsample()
        bern = d.Bernoulli(logits=logits).sample()
        relaxed = d.RelaxedBernoulli(torch.tensor(0.5), logits=probs_raw).rsample()
        category = d.Categorical(logits=cat).sample()
        return normal, uniform, lognormal, bern, relaxed, category


class ScriptedLoopIf(nn.Module):
    """A scripted loop (trip count from the input) whose body draws inside an If."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(int(steps)):
            h = torch.tanh(self.cell(h))
            if i % 2 == 0:  # noqa: SIM108 - an explicit If, exported as an If node
                h = h + 0.1 * torch.randn_like(h)
            else:
                h = h * 0.5
        return h


class CondNoise(nn.Module):
    """``torch.cond``: one branch adds noise, the other does not."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)

        def noisy(t: torch.Tensor) -> torch.Tensor:
            return t + torch.randn_like(t)

        def clean(t: torch.Tensor) -> torch.Tensor:
            return t * 2.0

        return torch.cond(h.sum() > 0, noisy, clean, (h,))


# --------------------------------------------------------------------------
# The case table
# --------------------------------------------------------------------------

_B = {0: "batch"}
_BS = {0: "batch", 1: "sequence"}


def build_cases() -> list[Case]:
    return [
        Case("sb3_ppo_gaussian", _sb3("ppo", "Pendulum-v1"),
             (Input("obs", (2, 3), dynamic=_B),), ("action",),
             (("ts", 13), ("dynamo", 18)),
             "PPO MlpPolicy (Pendulum): DiagGaussianDistribution.sample()",
             constant_dims={"batch": 2}),
        Case("sb3_sac_squashed", _sb3("sac", "Pendulum-v1"),
             (Input("obs", (2, 3), dynamic=_B),), ("action",),
             (("ts", 14), ("dynamo", 18)),
             "SAC Actor (Pendulum): SquashedDiagGaussianDistribution.sample() (tanh)",
             constant_dims={"batch": 2}),
        Case("sb3_ppo_categorical", _sb3("ppo", "CartPole-v1"),
             (Input("obs", (2, 4), dynamic=_B),), ("action",),
             (("ts", 11), ("dynamo", 18)),
             "PPO MlpPolicy (CartPole): CategoricalDistribution.sample() -> Multinomial",
             constant_dims={"batch": 2}),
        Case("diffusers_vae_sample", VaeSample,
             (Input("sample", (2, 3, 8, 8), dynamic=_B),), ("latent",),
             (("ts", 15), ("dynamo", 18), ("dynamo-static", 18)),
             "AutoencoderKL.encode(x).latent_dist.sample()",
             constant_dims={"batch": 2}),
        Case("diffusers_ddpm_step", DdpmStep,
             (Input("sample", (2, 2, 4, 4), dynamic=_B),), ("prev_sample",),
             (("ts", 12), ("ts", 16), ("dynamo", 18), ("dynamo-static", 18)),
             "DDPMScheduler.step(eps, t=10, x_t): variance noise randn_tensor(...)",
             constant_dims={"batch": 2}),
        Case("transformers_vits", VitsSpeech,
             (Input("input_ids", (2, 7), IDS, _BS, high=20),
              Input("attention_mask", (2, 7), MASK, _BS)),
             ("waveform", "sequence_lengths"),
             (("ts", 17), ("dynamo", 18)),
             "VitsModel (MMS-TTS): stochastic duration predictor noise, then flow noise",
             data_dependent="flow noise [batch, 8, frames]: frames = sum of the durations "
                            "predicted from the first draw"),
        Case("transformers_gpt2_topk", Gpt2TopK,
             (Input("input_ids", (2, 5), IDS, _BS, high=50),
              Input("attention_mask", (2, 5), MASK, _BS)),
             ("next_token",),
             (("ts", 14), ("dynamo", 18)),
             "GPT2LMHeadModel logits -> topk(5) -> softmax -> multinomial(1)",
             constant_dims={"batch": 2, "sequence": 5}),
        Case("transformers_bert_train", BertTrain,
             (Input("input_ids", (2, 5), IDS, _BS, high=40),
              Input("attention_mask", (2, 5), MASK, _BS)),
             ("last_hidden_state",),
             (("ts", 14), ("dynamo", 18)),
             "BertModel in train mode: nn.Dropout(0.1) in embeddings, attention, output",
             training=True, constant_dims={"batch": 2, "sequence": 5}),
        Case("transformers_convnext_droppath", ConvNextDropPath,
             (Input("pixel_values", (2, 3, 8, 8), dynamic=_B),), ("pooler_output",),
             (("ts", 15), ("dynamo", 18)),
             "ConvNextModel in train mode, drop_path_rate=0.5 (ConvNextDropPath: rand)",
             training=True, constant_dims={"batch": 2}),
        Case("transformers_speecht5_prenet", SpeechT5Prenet,
             (Input("input_values", (2, 6, 8), dynamic=_BS),
              Input("speaker_embeddings", (2, 4), dynamic=_B)),
             ("inputs_embeds",),
             (("ts", 17), ("dynamo", 18)),
             "SpeechT5SpeechDecoderPrenet._consistent_dropout: bernoulli(x[0], p=0.5)",
             constant_dims={"batch": 2, "sequence": 6}),
        Case("torch_distributions", Distributions,
             (Input("x", (2, 6), dynamic=_B),),
             ("normal", "uniform", "lognormal", "bernoulli", "relaxed_bernoulli", "categorical"),
             (("ts", 15), ("dynamo", 18)),
             "Normal/Uniform/LogNormal/RelaxedBernoulli.rsample, Bernoulli/Categorical.sample",
             constant_dims={"batch": 2}),
        Case("torch_script_loop_if", ScriptedLoopIf,
             (Input("x", (2, 4), dynamic=_B), Input("steps", (), IDS, high=4)),
             ("h",),
             (("ts", 16),),
             "torch.jit.script: for i in range(steps): if i % 2 == 0: h += 0.1 * randn_like(h)",
             data_dependent="per-iteration noise axis: the trip count is the value of `steps`",
             script=True, constant_dims={"batch": 2, "Loop_iterations": 3}),
        Case("torch_cond", CondNoise,
             (Input("x", (2, 4), dynamic=_B),), ("y",),
             (("dynamo", 18),),
             "torch.cond(h.sum() > 0, h + randn_like(h), h * 2)",
             data_dependent="none (the draw lives in the If's then-branch)",
             constant_dims={"batch": 2}),
    ]


# Why an export fails here, in words (the manifest also gives the exporter's own error).
_RANDN_GENERATOR = ("diffusers' randn_tensor calls torch.randn(shape, generator=None, ...): "
                    "torch.export keeps the aten.randn.generator overload, which the ONNX "
                    "exporter cannot translate")
_SYMBOLIC_RANDN = ("the same torch.randn(shape, generator=None) with a symbolic batch fails "
                   "in torch.export itself")
EXPORT_FAILURE_NOTES = {
    "diffusers_vae_sample_dynamo18": _SYMBOLIC_RANDN,
    "diffusers_vae_sample_dynamo18_static": _RANDN_GENERATOR,
    "diffusers_ddpm_step_dynamo18": _SYMBOLIC_RANDN,
    "diffusers_ddpm_step_dynamo18_static": _RANDN_GENERATOR,
}


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------


def _build(case: Case) -> nn.Module:
    torch.manual_seed(0)
    torch.distributions.Distribution.set_default_validate_args(False)  # asserts on data
    module = case.build()
    module.train(case.training)
    return module


def _export_ts(case: Case, module: nn.Module, opset: int, path: Path) -> None:
    names = [i.name for i in case.inputs]
    axes = {i.name: dict(i.dynamic) for i in case.inputs if i.dynamic}
    kwargs = {}
    if case.training:
        kwargs = {"training": torch.onnx.TrainingMode.TRAINING, "do_constant_folding": False}
    if case.script:
        module = torch.jit.script(module)
    torch.onnx.export(module, case.example(), str(path), dynamo=False, opset_version=opset,
                      input_names=names, output_names=list(case.outputs), dynamic_axes=axes,
                      **kwargs)


def _export_dynamo(case: Case, module: nn.Module, opset: int, path: Path,
                   static: bool = False) -> None:
    dims: dict[str, torch.export.Dim] = {}
    shapes = {}
    for i in case.inputs:
        shapes[i.name] = {axis: dims.setdefault(name, torch.export.Dim(name, min=1, max=512))
                          for axis, name in i.dynamic.items()} or None
    if static:
        shapes = None
    torch.onnx.export(module, case.example(), str(path), dynamo=True, opset_version=opset,
                      input_names=[i.name for i in case.inputs], output_names=list(case.outputs),
                      dynamic_shapes=shapes, external_data=False, optimize=True)


def file_stem(case: Case, exporter: str, opset: int) -> str:
    if exporter == "dynamo-static":
        return f"{case.name}_dynamo{opset}_static"
    return f"{case.name}_{exporter}{opset}"


def export_case(case: Case, exporter: str, opset: int, out_dir: Path,
                make_self_contained: Callable[[Path], None]) -> Path:
    path = out_dir / f"{file_stem(case, exporter, opset)}.onnx"
    module = _build(case)
    with (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()),
          warnings.catch_warnings()):
        warnings.simplefilter("ignore")
        if exporter == "ts":
            _export_ts(case, module, opset, path)
        else:
            _export_dynamo(case, module, opset, path, static=exporter == "dynamo-static")
    make_self_contained(path)
    return path


# --------------------------------------------------------------------------
# What the tests read, and the manifest
# --------------------------------------------------------------------------


def case_entry(case: Case, exporter: str, opset: int) -> dict:
    return {
        "case": case.name,
        "exporter": exporter,
        "opset": opset,
        "source": case.source,
        "inputs": [{"name": i.name, "kind": i.kind, "high": i.high} for i in case.inputs],
        "constant_dims": case.constant_dims,
        "data_dependent": case.data_dependent,
    }


def _input_dims(model: onnx.ModelProto) -> str:
    parts = []
    for vi in model.graph.input:
        dims = [d.dim_param or str(d.dim_value) for d in vi.type.tensor_type.shape.dim]
        parts.append(f"{vi.name}[{', '.join(dims)}]")
    return "; ".join(parts)


def manifest_row(path: Path, entry: dict, random_ops: list[str]) -> str:
    model = onnx.load(str(path))
    size_kb = path.stat().st_size / 1024
    return (f"| `{path.name}` | {entry['exporter']} | {entry['opset']} | {size_kb:.0f} KB | "
            f"{', '.join(random_ops) or '-'} | {_input_dims(model)} | "
            f"{entry['data_dependent']} |")


def write_outputs(out_dir: Path, rows: list[str], entries: dict[str, dict],
                  failures: list[tuple[str, str]], header: str) -> None:
    (out_dir / "cases.json").write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    lines = [
        "# Fixtures from real architectures",
        "",
        header,
        "",
        "| file | exporter | opset | size | random ops | inputs (symbolic dims) | "
        "data-dependent draw dims |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "## What each case samples",
        "",
        *sorted({f"- `{e['case']}`: {e['source']}" for e in entries.values()}),
        "",
    ]
    if failures:
        lines += ["## Exports that fail here (with the exporter's own error)", ""]
        lines += [f"- `{name}`: {why}" for name, why in failures]
        lines.append("")
    (out_dir / "MANIFEST.md").write_text("\n".join(lines))


def _first_line(exc: Exception) -> str:
    """The root cause of an export failure, as one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _draws(node: onnx.NodeProto) -> bool:
    """Dropout draws only in training mode (exporters pass training_mode as input 2)."""
    return node.op_type != "Dropout" or (len(node.input) > 2 and bool(node.input[2]))


def _leaks_paths(path: Path) -> bool:
    data = path.read_bytes()
    return any(marker in data for marker in (b"/root/", b"/home/", b"/tmp/", b"site-packages"))


def run_arch(out_dir: Path, only: list[str] | None = None) -> int:
    """Export every case into out_dir; write cases.json and MANIFEST.md. Returns an exit code."""
    from make_fixtures import check, make_self_contained, random_nodes

    out_dir.mkdir(parents=True, exist_ok=True)
    rows, entries, failures, status = [], {}, [], 0
    for case in build_cases():
        for exporter, opset in case.exporters:
            stem = file_stem(case, exporter, opset)
            if only and stem not in only and case.name not in only:
                continue
            try:
                path = export_case(case, exporter, opset, out_dir, make_self_contained)
            except Exception as exc:  # noqa: BLE001 - an exporter's failure is recorded
                for stale in out_dir.glob(f"{stem}.onnx*"):
                    stale.unlink()
                note = EXPORT_FAILURE_NOTES.get(stem)
                failures.append((f"{stem}.onnx", _first_line(exc) + (f" ({note})" if note
                                                                      else "")))
                print(f"EXPORT-FAIL {stem}: {failures[-1][1]}")
                continue
            problem = check(path) or ("absolute paths in the file" if _leaks_paths(path) else None)
            ops = [n.op_type for n in random_nodes(onnx.load(str(path))) if _draws(n)]
            if problem or not ops:
                status = 1
                print(f"BAD      {path.name}: {problem or 'no random op'}")
            else:
                print(f"ok       {path.name} ({path.stat().st_size} B): {ops}")
            entries[path.name] = case_entry(case, exporter, opset)
            rows.append(manifest_row(path, entries[path.name], ops))
    if not only:
        header = (f"Generated by `python scripts/make_fixtures.py --set arch` with torch "
                  f"{torch.__version__} and onnx {onnx.__version__}; small random-init configs, "
                  "`torch.manual_seed(0)`. Do not edit by hand. File names end in the exporter "
                  "and opset (`ts13`: TorchScript, opset 13). `cases.json` tells the tests how to "
                  "make realistic inputs (ids below the vocabulary size, 0/1 masks).")
        write_outputs(out_dir, rows, entries, failures, header)
    return status

"""The torch modules behind the issue-14 edge fixtures (used only by make_edge_fixtures.py).

Each is a small, seeded stand-in for a model kind people deploy: a Piper-style VITS with a
`scales` input, DDPM/DDIM samplers (unrolled and as a scripted Loop), LLM sampling heads, a GAN
generator, StyleGAN-like noise injection, a Bayesian linear layer and MC-dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = 8


class PiperVits(nn.Module):
    """Piper-style VITS inference: ids [batch, T], scales [noise_scale, length_scale, noise_w].

    text encoder -> stochastic duration noise * noise_w -> ceil(exp(logw) * length_scale) ->
    expand by durations -> flow noise randn_like(m_p) * noise_scale -> decoder. The frame count
    is the sum of the predicted durations: a data-dependent dim.
    """

    def __init__(self, vocab: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, HIDDEN)
        self.enc = nn.Conv1d(HIDDEN, HIDDEN, 3, padding=1)
        self.proj = nn.Conv1d(HIDDEN, 2 * 4, 1)  # m_p and logs_p, 4 channels each
        self.dur = nn.Conv1d(HIDDEN + 2, 1, 1)
        self.dec = nn.Conv1d(4, 1, 3, padding=1)

    def forward(self, ids: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        noise_scale, length_scale, noise_w = scales[0], scales[1], scales[2]
        x = torch.relu(self.enc(self.emb(ids).transpose(1, 2)))  # [B, H, T]
        m_p, logs_p = torch.split(self.proj(x), 4, dim=1)  # [B, 4, T] each
        z = torch.randn(x.size(0), 2, x.size(2)) * noise_w  # stochastic duration noise
        logw = self.dur(torch.cat([x, z], dim=1)) * 0.5  # [B, 1, T]
        w_ceil = torch.ceil(torch.exp(logw) * length_scale)
        cum = torch.cumsum(w_ceil, dim=2)  # [B, 1, T]
        frames = torch.clamp_min(cum[:, 0, -1].max(), 1).long()
        f = torch.arange(frames).to(cum.dtype)  # [F]
        path = (f[None, None, :] < cum.transpose(1, 2)).to(cum.dtype)  # [B, T, F]
        path = path - F.pad(path, (0, 0, 1, 0))[:, :-1]
        m_p = torch.matmul(m_p, path)  # [B, 4, F]
        logs_p = torch.matmul(logs_p, path)
        z_p = m_p + torch.randn_like(m_p) * torch.exp(logs_p) * noise_scale
        return torch.tanh(self.dec(z_p)).squeeze(1)  # [B, F]


class Eps(nn.Module):
    """The tiny noise-prediction network of the diffusion samplers."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)) * (1.0 + t)


def _ddpm_schedule(steps: int) -> tuple[list[float], list[float], list[float]]:
    """Linear betas; plain Python so the exporters see constants, not tensor ops."""
    betas = [1e-2 + (0.2 - 1e-2) * i / (steps - 1) for i in range(steps)]
    alphas = [1.0 - b for b in betas]
    bars = [alphas[0]]
    for a in alphas[1:]:
        bars.append(bars[-1] * a)
    coef = [b / (1.0 - bar) ** 0.5 for b, bar in zip(betas, bars, strict=True)]
    return alphas, coef, [b**0.5 for b in betas]


class DdpmUnrolled(nn.Module):
    """DDPM ancestral sampling, 4 steps unrolled: x_T ~ N(0, I), one fresh draw per step."""

    steps = 4

    def __init__(self) -> None:
        super().__init__()
        self.eps = Eps()

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        alphas, coef, sigma = _ddpm_schedule(self.steps)
        x = torch.randn_like(cond)
        for i in reversed(range(self.steps)):
            t = torch.full((), i / self.steps)
            mean = (x - coef[i] * self.eps(x + cond, t)) / alphas[i] ** 0.5
            x = mean + sigma[i] * torch.randn_like(x) if i > 0 else mean
        return x


class DdimUnrolled(nn.Module):
    """DDIM with eta = 0.5, 3 steps unrolled: sigma_t * randn_like(x) in every step."""

    def __init__(self) -> None:
        super().__init__()
        self.eps = Eps()

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        bars = [0.3, 0.6, 0.9, 1.0]
        x = torch.randn_like(cond)
        for i in range(3):
            a, a_next = bars[i], bars[i + 1]
            e = self.eps(x + cond, torch.full((), float(i)))
            x0 = (x - (1 - a) ** 0.5 * e) / a**0.5
            sigma = 0.5 * ((1 - a_next) / (1 - a) * (1 - a / a_next)) ** 0.5
            direction = (max(1 - a_next - sigma**2, 0.0)) ** 0.5 * e
            x = a_next**0.5 * x0 + direction + sigma * torch.randn_like(x)
        return x


class DdpmLoop(nn.Module):
    """DDPM as a real Loop (scripted): trip count from `timesteps`, one draw per iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, cond: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        x = torch.randn_like(cond)
        for i in range(timesteps.size(0)):
            t = timesteps[i]
            e = torch.tanh(self.conv(x + cond)) * t
            x = (x - 0.1 * e) * 1.05 + torch.sqrt(t) * 0.1 * torch.randn_like(x)
        return x


class DdimLoop(nn.Module):
    """DDIM (eta = 0.5) as a real Loop (scripted) over `alpha_bars`, a draw per iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, cond: torch.Tensor, alpha_bars: torch.Tensor) -> torch.Tensor:
        x = torch.randn_like(cond)
        for i in range(alpha_bars.size(0) - 1):
            a = torch.sigmoid(alpha_bars[i])  # keep every alpha in (0, 1) whatever is fed
            a_next = torch.sigmoid(alpha_bars[i + 1])
            e = torch.tanh(self.conv(x + cond))
            x0 = (x - torch.sqrt(1 - a) * e) / torch.sqrt(a)
            sigma = 0.5 * torch.sqrt(torch.abs((1 - a_next) / (1 - a) * (1 - a / a_next)))
            direction = torch.sqrt(torch.clamp(1 - a_next - sigma * sigma, min=0.0)) * e
            x = torch.sqrt(a_next) * x0 + direction + sigma * torch.randn_like(x)
        return x


class TopK(nn.Module):
    """LLM top-k sampling head over a 32k vocabulary: logits [batch, 32000] -> token ids."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(logits / 0.8, 50, dim=-1)
        probs = torch.softmax(values, dim=-1)
        choice = torch.multinomial(probs, 1)
        return torch.gather(indices, -1, choice)


class TopP(nn.Module):
    """LLM nucleus (top-p = 0.9) sampling head over a 32k vocabulary."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
        drop = (cum - torch.softmax(sorted_logits, dim=-1)) > 0.9
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        choice = torch.multinomial(torch.softmax(sorted_logits, dim=-1), 1)
        return torch.gather(order, -1, choice)


class SampleVocab(nn.Module):
    """torch.multinomial(softmax(logits), 4) over a GPT-2 vocabulary (50,257 classes)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(torch.softmax(logits, dim=-1), 4, replacement=True)


class AutoregressiveSampler(nn.Module):
    """Autoregressive sampling Loop (scripted): embed the last token, sample the next one."""

    def __init__(self, vocab: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, HIDDEN)
        self.head = nn.Linear(HIDDEN, vocab)

    def forward(self, start: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        token = start  # [batch, 1]
        out = [token]
        for _ in range(int(steps)):
            logits = self.head(torch.tanh(self.emb(token[:, -1])))
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1)
            out.append(token)
        return torch.cat(out, dim=1)


class GanGenerator(nn.Module):
    """A GAN generator drawing its own latent: z = randn(batch, 16) -> MLP -> tanh image."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16 + 4, 32), nn.LeakyReLU(0.2), nn.Linear(32, 64))

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        z = torch.randn(label.size(0), 16)
        return torch.tanh(self.net(torch.cat([z, label], dim=1))).reshape(-1, 1, 8, 8)


class StyleNoise(nn.Module):
    """StyleGAN-like synthesis: per-layer noise randn(batch, 1, H, W) scaled by a learned weight."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
        self.noise_strength = nn.Parameter(torch.tensor([0.1, 0.2, 0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            if i > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = conv(x)
            noise = torch.randn(x.size(0), 1, x.size(2), x.size(3))
            x = F.leaky_relu(x + self.noise_strength[i] * noise, 0.2)
        return x


class BayesianLinear(nn.Module):
    """Bayes-by-backprop linear layer: w = mu + softplus(rho) * randn_like(mu), same for b."""

    def __init__(self, n_in: int = 10, n_out: int = 6) -> None:
        super().__init__()
        self.w_mu = nn.Parameter(torch.randn(n_out, n_in) * 0.1)
        self.w_rho = nn.Parameter(torch.full((n_out, n_in), -3.0))
        self.b_mu = nn.Parameter(torch.zeros(n_out))
        self.b_rho = nn.Parameter(torch.full((n_out,), -3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w_mu + F.softplus(self.w_rho) * torch.randn_like(self.w_mu)
        b = self.b_mu + F.softplus(self.b_rho) * torch.randn_like(self.b_mu)
        return F.linear(x, w, b)


class McDropout(nn.Module):
    """MC-dropout (scripted Loop): average n passes with F.dropout(training=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(10, 16)
        self.l2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor, passes: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.size(0), 1)
        n = int(passes)
        for _ in range(n):
            h = F.dropout(torch.relu(self.l1(x)), p=0.25, training=True)
            total = total + self.l2(h)
        return total / n


class Fp16DrawToFloat(nn.Module):
    """A float16 draw cast to a float32 output: (mu.half() + randn_like(mu.half()) * s).float()."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = self.mu(x).half()
        return (mu + torch.randn_like(mu) * 0.5).float()

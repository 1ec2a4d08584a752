"""A plain PyTorch implementation of nst-jax's objective, Adam step and L-BFGS, for comparison.

Written from the formulas (Gatys et al. 2015/2016; the conventions table of
:mod:`nst_jax.losses`), not from the JAX code, so that ``scripts/benchmark.py`` can time the same
loss side by side and tests can check the two implementations agree. Only names and shapes are
taken from nst-jax; nothing here calls JAX.

* The network is torchvision's ``vgg19().features`` trunk built by hand (``Conv2d(3×3, pad 1)``,
  ``ReLU``, 2×2 pooling per block), cut after the deepest requested layer, eager, in NCHW or
  ``channels_last`` memory format.
* The objective ``α Σ c_l L_content + β Σ w_l E_l + γ TV`` takes one ``(1, 3, H, W)`` RGB image in
  ``[0, 1]``, applies the weights' preprocessing (channel order, scale, mean, std) and follows one
  of the conventions ``tf``, ``gatys``, ``jcjohnson``.
* Adam: ``torch.optim.Adam`` then ``clamp_(0, 1)`` (nst-jax's Adam step). L-BFGS:
  ``torch.optim.LBFGS`` as jcjohnson/neural-style's PyTorch port (neural-style-pt) calls it —
  ``history_size=100``, ``lr=1``, no line search (or ``strong_wolfe``), ``max_iter`` iterations in
  one ``step`` — on ``f(clamp(x, 0, 1))``, as nst-jax's L-BFGS does.

Usage::

    ref = TorchStyleTransfer(params, preprocessing, spec, content, style, channels_last=True)
    loss, terms = ref.loss(x)          # x: (1, 3, H, W) float32 tensor
    history = ref.run_adam(x0, steps=10, lr=0.02, b1=0.99, b2=0.999, eps=0.1)
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: Output channels per conv, per block (VGG-19 "E").
BLOCKS = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512))
#: The same for VGG-16 ("D").
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

#: name -> (gram_norm, content, style, tv, tv_scale, average_layers); see nst_jax.losses.
CONVENTIONS = {
    "tf": ("positions", "mse", "mse", "l1", 1.0, True),
    "gatys": ("none", "half_sse", "gatys", "l1", 1.0, True),
    "jcjohnson": ("elements", "mse", "mse", "half_l2", 255.0, False),
}


def layer_sequence(blocks=BLOCKS) -> list[str]:
    """``conv1_1, relu1_1, conv1_2, ..., pool5``: torchvision's ``features`` order."""
    names = []
    for b, block in enumerate(blocks):
        for i in range(len(block)):
            names += [f"conv{b + 1}_{i + 1}", f"relu{b + 1}_{i + 1}"]
        names.append(f"pool{b + 1}")
    return names


def canonical(name: str) -> str:
    """Keras aliases ``block{b}_conv{i}`` / ``block{b}_pool`` to ``relu{b}_{i}`` / ``pool{b}``."""
    m = re.match(r"^block(\d)_conv(\d)$", name)
    if m:
        return f"relu{m.group(1)}_{m.group(2)}"
    m = re.match(r"^block(\d)_pool$", name)
    return f"pool{m.group(1)}" if m else name


@dataclasses.dataclass(frozen=True)
class Spec:
    """The objective's settings (the fields of ``nst_jax.objective.LossSpec`` that matter here)."""

    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    content_weight: float
    style_weight: float
    tv_weight: float
    style_layer_weights: tuple[float, ...] | None = None
    convention: str = "tf"
    pooling: str = "max"

    @classmethod
    def from_loss_spec(cls, spec) -> "Spec":
        """Copies the fields of an ``nst_jax.objective.LossSpec`` (or anything with them)."""
        return cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(cls)})


class VGGTrunk(torch.nn.Module):
    """VGG-19 (or VGG-16, when ``params`` has no ``conv3_4``) ``features`` up to the deepest of
    ``layers``; ``forward`` returns ``{name: NCHW}``."""

    def __init__(self, params: Mapping[str, Mapping[str, np.ndarray]], layers: Sequence[str], pooling: str):
        super().__init__()
        seq = layer_sequence(BLOCKS if "conv3_4" in params else VGG16_BLOCKS)
        self.wanted = {canonical(n): n for n in layers}
        last = max(seq.index(n) for n in self.wanted)
        self.names = seq[: last + 1]
        self.convs = torch.nn.ModuleDict()
        for name in self.names:
            if name.startswith("conv"):
                k = np.asarray(params[name]["kernel"], np.float32)  # HWIO
                conv = torch.nn.Conv2d(k.shape[2], k.shape[3], 3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
                    conv.bias.copy_(torch.from_numpy(np.array(params[name]["bias"], np.float32)))
                conv.requires_grad_(False)
                self.convs[name] = conv
        self.pool = torch.nn.MaxPool2d(2, 2) if pooling == "max" else torch.nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            if name.startswith("conv"):
                x = self.convs[name](x)
            elif name.startswith("relu"):
                x = F.relu(x)
            else:
                x = self.pool(x)
            if name in self.wanted:
                out[self.wanted[name]] = x
        return out


class TorchStyleTransfer:
    """The nst-jax objective in PyTorch for one content image and one style image.

    Args:
      params: ``{"conv1_1": {"kernel": HWIO, "bias": (C,)}, ...}`` (NumPy or JAX arrays).
      preprocessing: an object with ``channel_order``, ``scale``, ``mean``, ``std``.
      spec: a :class:`Spec` or an ``nst_jax.objective.LossSpec``.
      content, style: ``(H, W, 3)`` RGB arrays in ``[0, 1]``.
      channels_last: run the network in ``torch.channels_last`` memory format.
      dtype: ``torch.float32`` or ``torch.bfloat16`` (CPU autocast: convs in bf16, Gram matrices
        and losses in float32).
    """

    def __init__(self, params, preprocessing, spec, content, style, *, channels_last=True, dtype=torch.float32):
        self.spec = spec if isinstance(spec, Spec) else Spec.from_loss_spec(spec)
        s = self.spec
        self.conv = CONVENTIONS[s.convention]
        self.layers = tuple(dict.fromkeys(s.content_layers + s.style_layers))
        self.net = VGGTrunk(params, self.layers, s.pooling).eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = self.net.to(memory_format=self.memory_format)
        self.dtype = dtype
        p = preprocessing
        order = [2, 1, 0] if p.channel_order == "BGR" else [0, 1, 2]
        self.order = torch.tensor(order)
        self.scale = float(p.scale)
        self.mean = torch.tensor(p.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32).view(1, 3, 1, 1)
        avg = self.conv[5]
        self.content_w = {k: (1.0 / len(s.content_layers) if avg else 1.0) for k in s.content_layers}
        lw = s.style_layer_weights or [1.0 / len(s.style_layers) if avg else 1.0] * len(s.style_layers)
        self.style_w = dict(zip(s.style_layers, lw))
        with torch.no_grad():
            cf = self.features(to_nchw(content))
            sf = self.features(to_nchw(style))
        self.content_targets = {k: cf[k].float() for k in s.content_layers}
        self.style_targets = {k: self.gram(sf[k]) for k in s.style_layers}

    # ------------------------------------------------------------------ the objective
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """VGG activations of a ``(1, 3, H, W)`` RGB ``[0, 1]`` image."""
        x = (x[:, self.order] * self.scale - self.mean) / self.std
        x = x.contiguous(memory_format=self.memory_format)
        if self.dtype == torch.float32:
            return self.net(x)
        with torch.autocast("cpu", dtype=self.dtype):
            return self.net(x)

    def gram(self, f: torch.Tensor) -> torch.Tensor:
        """``FᵀF`` with the convention's normalisation; float32 ``(C, C)``."""
        _, c, h, w = f.shape
        m = f[0].permute(1, 2, 0).reshape(h * w, c).float()  # a view in channels_last
        g = m.T @ m
        norm = self.conv[0]
        if norm == "positions":
            return g / (h * w)
        if norm == "elements":
            return g / (h * w * c)
        return g

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss of a ``(1, 3, H, W)`` image and ``{"content", "style", "tv"}``."""
        s = self.spec
        gram_norm, content_kind, style_kind, tv_kind, tv_scale, _ = self.conv
        feats = self.features(x)
        content = x.new_zeros(())
        for k in s.content_layers:
            d = feats[k].float() - self.content_targets[k]
            term = 0.5 * (d * d).sum() if content_kind == "half_sse" else (d * d).mean()
            content = content + s.content_weight * self.content_w[k] * term
        style = x.new_zeros(())
        for k in s.style_layers:
            f = feats[k]
            _, c, h, w = f.shape
            d = self.gram(f) - self.style_targets[k]
            if style_kind == "gatys":
                term = (d * d).sum() / (4.0 * c**2 * (h * w) ** 2)
            else:
                term = (d * d).mean()
            style = style + s.style_weight * self.style_w[k] * term
        img = x[0].float() * tv_scale
        if tv_kind == "l1":
            tv = (img[:, 1:] - img[:, :-1]).abs().sum() + (img[:, :, 1:] - img[:, :, :-1]).abs().sum()
        else:
            dy = img[:, 1:, :-1] - img[:, :-1, :-1]
            dx = img[:, :-1, 1:] - img[:, :-1, :-1]
            tv = 0.5 * ((dx * dx).sum() + (dy * dy).sum())
        tv = s.tv_weight * tv
        return content + style + tv, {"content": content, "style": style, "tv": tv}

    def value_and_grad(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Loss and its gradient with respect to ``x`` (a new leaf tensor is made)."""
        x = x.detach().clone().requires_grad_(True)
        loss, _ = self.loss(x)
        loss.backward()
        return float(loss.detach()), x.grad

    # ------------------------------------------------------------------ the optimisers
    def run_adam(
        self,
        x0: torch.Tensor,
        steps: int,
        *,
        lr: float = 0.02,
        b1: float = 0.99,
        b2: float = 0.999,
        eps: float = 0.1,
        on_step: Callable[[int, float], None] | None = None,
    ) -> tuple[torch.Tensor, list[float]]:
        """``steps`` Adam steps ``x ← clamp(x + adam(∇f), 0, 1)``; returns ``(x, losses)``."""
        x = x0.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr, betas=(b1, b2), eps=eps)
        losses = []
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            loss, _ = self.loss(x)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            losses.append(float(loss.detach()))
            if on_step:
                on_step(i, losses[-1])
        return x.detach(), losses

    def run_lbfgs(
        self,
        x0: torch.Tensor,
        iterations: int,
        *,
        history: int = 100,
        line_search: str | None = None,
        on_eval: Callable[[int, float], None] | None = None,
    ) -> tuple[torch.Tensor, list[float], list[float]]:
        """jcjohnson-style L-BFGS on ``f(clamp(x, 0, 1))``.

        One ``torch.optim.LBFGS.step`` of ``max_iter=iterations`` (tolerances disabled, as
        neural-style-pt does). Returns ``(clamp(x), losses, times)``: the loss and the wall time
        since the start at every function evaluation.
        """
        x = x0.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [x],
            lr=1.0,
            max_iter=iterations,
            history_size=history,
            tolerance_grad=-1,
            tolerance_change=-1,
            line_search_fn=line_search,
        )
        losses: list[float] = []
        times: list[float] = []
        start = time.perf_counter()

        def closure():
            opt.zero_grad(set_to_none=True)
            loss, _ = self.loss(x.clamp(0.0, 1.0))
            loss.backward()
            losses.append(float(loss.detach()))
            times.append(time.perf_counter() - start)
            if on_eval:
                on_eval(len(losses), losses[-1])
            return loss

        opt.step(closure)
        return x.detach().clamp(0.0, 1.0), losses, times


def to_nchw(image) -> torch.Tensor:
    """``(H, W, 3)`` array → ``(1, 3, H, W)`` float32 tensor."""
    a = np.array(image, np.float32, copy=True)  # writable, contiguous
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def to_hwc(x: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` tensor → ``(H, W, 3)`` float32 array."""
    return x[0].detach().float().permute(1, 2, 0).contiguous().numpy()

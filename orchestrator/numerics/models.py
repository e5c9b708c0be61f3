"""Models of the ``model`` factor: linear, deep linear, MLP and small CNN (with/without BN).

Every model is initialised in float64 from the trial's ``init`` seed stream and then cast
to the precision's parameter dtype, so trials that differ only in precision or optimizer
start from the same weights (rounded to their dtype).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import did_you_mean
from .audit import MODELS

__all__ = ["Cnn", "make_model", "initialise"]


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class Cnn(nn.Module):
    """``depth`` 3x3 convolutions (``width`` channels, ReLU, optional BN), global average
    pooling, a linear head. Inputs ``[n, C, H, W]``, or ``[n, D]`` (treated as a 1-D signal)."""

    def __init__(self, input_shape: Sequence[int], out_dim: int, width: int, depth: int, batchnorm: bool):
        super().__init__()
        two_d = len(input_shape) == 3
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
        self.in_channels = input_shape[0] if two_d else 1
        self.two_d = two_d
        layers: list[nn.Module] = []
        channels = self.in_channels
        for _ in range(depth):
            layers.append(conv(channels, width, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(bn(width))
            layers.append(nn.ReLU())
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.two_d:
            x = x.reshape(x.shape[0], 1, -1)
        h = self.features(x)
        return self.head(h.flatten(2).mean(-1))


def make_model(name: str, input_shape: Sequence[int], out_dim: int, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Build (uninitialised) model ``name`` for inputs of ``input_shape`` (without the batch).

    Settings read from ``config``: ``width`` (hidden units or channels, default 64),
    ``depth`` (hidden layers; for ``deep_linear`` the number of weight matrices, default 2),
    ``bias`` (default True; ``deep_linear`` never has biases).
    """
    config = config or {}
    width = int(config.get("width", 64))
    depth = int(config.get("depth", 2))
    bias = bool(config.get("bias", True))
    in_dim = int(math.prod(input_shape))
    if name == "linear":
        return nn.Sequential(_Flatten(), nn.Linear(in_dim, out_dim, bias=bias))
    if name == "deep_linear":
        if depth < 1:
            raise ValueError(f"depth: expected >= 1 weight matrices for deep_linear, found {depth}")
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        return nn.Sequential(_Flatten(), *(nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:])))
    if name in ("mlp", "mlp_bn"):
        layers: list[nn.Module] = [_Flatten()]
        dim = in_dim
        for _ in range(depth):
            layers.append(nn.Linear(dim, width, bias=bias and name == "mlp"))
            if name == "mlp_bn":
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            dim = width
        layers.append(nn.Linear(dim, out_dim, bias=bias))
        return nn.Sequential(*layers)
    if name in ("cnn", "cnn_bn"):
        return Cnn(input_shape, out_dim, width, depth, batchnorm=name == "cnn_bn")
    raise ValueError(f"model: expected a model level, found {name!r}. {did_you_mean(str(name), MODELS)}")


def initialise(model: nn.Module, seed: int, *, scheme: str = "fan_in", scale: float = 1.0) -> None:
    """Draw every weight in float64 from ``seed``; biases 0, batch-norm scales 1.

    ``scheme``: ``normal`` - N(0, scale^2) (the talk's standard-normal initialisation);
    ``fan_in`` - N(0, scale^2 / fan_in).
    """
    if scheme not in ("normal", "fan_in"):
        raise ValueError(f"init: expected 'normal' or 'fan_in', found {scheme!r}")
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                weight = module.weight
                fan_in = weight[0].numel()
                std = scale if scheme == "normal" else scale / math.sqrt(fan_in)
                weight.copy_(torch.randn(weight.shape, generator=generator, dtype=torch.float64) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

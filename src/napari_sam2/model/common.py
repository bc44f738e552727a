"""Small building blocks shared by several parts of the SAM 2 network.

Parameter names (``layers.N``, ``weight``, ``bias``) follow Meta's checkpoints so that
official state dicts load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """A stack of ``depth`` linear layers with an activation between them.

    Maps (..., width_in) to (..., width_out). No activation follows the last layer;
    ``sigmoid_output`` squashes the result into (0, 1).
    """

    def __init__(
        self,
        width_in: int,
        width_hidden: int,
        width_out: int,
        depth: int,
        *,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        widths_in = [width_in] + [width_hidden] * (depth - 1)
        widths_out = [width_hidden] * (depth - 1) + [width_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths_in, widths_out))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for index, linear in enumerate(self.layers):
            x = linear(x)
            if index < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        variance = centred.pow(2).mean(dim=1, keepdim=True)
        normalised = centred / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * normalised + self.bias[:, None, None]


def sine_frequencies(num_feats: int, temperature: float, device=None) -> torch.Tensor:
    """Divisors for a sine/cosine encoding of ``num_feats`` channels.

    Channels come in (sin, cos) pairs that share one frequency: channel ``i`` is divided
    by ``temperature ** (2 * (i // 2) / num_feats)``.
    """
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """Even channels take sin, odd channels cos, of the same (..., C) angles."""
    out = torch.empty_like(angles)
    out[..., 0::2] = angles[..., 0::2].sin()
    out[..., 1::2] = angles[..., 1::2].cos()
    return out


def sine_position_encoding_2d(
    height: int,
    width: int,
    channels: int,
    *,
    temperature: float = 10000.0,
    device=None,
) -> torch.Tensor:
    """DETR-style normalised sine encoding of a grid, shape (1, channels, height, width).

    The first half of the channels encodes the row, the second half the column. Positions run
    from 1 to the side length and are scaled to (0, 2*pi].
    """
    half = channels // 2
    eps = 1e-6
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    rows = rows / (rows[-1] + eps) * (2 * math.pi)
    cols = cols / (cols[-1] + eps) * (2 * math.pi)
    freqs = sine_frequencies(half, temperature, device)
    enc_rows = _interleave_sin_cos(rows[:, None] / freqs)  # (H, half)
    enc_cols = _interleave_sin_cos(cols[:, None] / freqs)  # (W, half)
    grid = torch.cat(
        [
            enc_rows[:, None, :].expand(height, width, half),
            enc_cols[None, :, :].expand(height, width, half),
        ],
        dim=-1,
    )
    return grid.permute(2, 0, 1).unsqueeze(0).contiguous()


class SinePositionEncoding(nn.Module):
    """Module wrapper of :func:`sine_position_encoding_2d` with a per-size cache.

    ``forward(x)`` takes a (B, C, H, W) tensor and returns the (B, channels, H, W) encoding in
    x's dtype. It has no parameters, so it adds nothing to the state dict.
    """

    def __init__(self, channels: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.channels = channels
        self.temperature = temperature
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-2], x.shape[-1], x.device)
        grid = self._cache.get(key)
        if grid is None:
            grid = sine_position_encoding_2d(
                x.shape[-2],
                x.shape[-1],
                self.channels,
                temperature=self.temperature,
                device=x.device,
            )
            self._cache[key] = grid
        return grid.to(x.dtype).expand(x.shape[0], -1, -1, -1)


def sine_encoding_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0):
    """Transformer sine encoding of scalar positions: (...,) -> (..., dim).

    The first half of the channels holds sines, the second half cosines.
    """
    freqs = sine_frequencies(dim // 2, temperature, positions.device)
    angles = positions.unsqueeze(-1).float() / freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def activation_by_name(name: str):
    """The functional activation called ``name`` ("relu", "gelu" or "glu")."""
    table = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
    return table[name]

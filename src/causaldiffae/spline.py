"""A monotone rational-quadratic spline on [lo, hi], identity outside (Durkan et al., "Neural Spline Flows", 2019).

The mechanisms (mechanisms.py) use it as a learned monotone transform of a child's label: it is invertible in
closed form, so the noise behind a label is abducted exactly, and it can bend a label whose noise acts inside a
nonlinearity (MorphoMNIST's ``64 + 191 sigmoid(.)``) back into a space where the noise adds.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

MIN_BIN = 1e-3  # smallest bin width or height, as a share of the interval
MIN_SLOPE = 1e-3


def knots(raw_widths: torch.Tensor, raw_heights: torch.Tensor, raw_slopes: torch.Tensor, lo: float, hi: float,
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unconstrained parameters (K,), (K,), (K - 1,) -> knot x (K + 1,), knot y (K + 1,), slopes (K + 1,).

    Both end slopes are 1, so the spline joins the identity tails smoothly; zero parameters give the identity
    (equal bins, slope 1 everywhere: softplus(log(e - 1)) = 1)."""
    k = raw_widths.shape[0]

    def edges(raw: torch.Tensor) -> torch.Tensor:
        share = MIN_BIN + (1 - MIN_BIN * k) * torch.softmax(raw, dim=0)
        cum = F.pad(torch.cumsum(share, dim=0), (1, 0))
        cum = cum / cum[-1]  # the last knot exactly at hi
        return lo + (hi - lo) * cum

    inner = MIN_SLOPE + F.softplus(raw_slopes + _IDENTITY_SLOPE)
    one = torch.ones(1, dtype=inner.dtype, device=inner.device)
    return edges(raw_widths), edges(raw_heights), torch.cat([one, inner, one])


_IDENTITY_SLOPE = float(torch.log(torch.expm1(torch.tensor(1.0 - MIN_SLOPE))))


def transform(x: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor, slopes: torch.Tensor, inverse: bool = False,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The spline (or its inverse) at x (any shape) and log |d out / d in|, elementwise; identity outside
    [xk[0], xk[-1]] (which equals [yk[0], yk[-1]])."""
    lo, hi = xk[0], xk[-1]
    inside = (x > lo) & (x < hi)
    xc = x.clamp(lo, hi)
    src = yk if inverse else xk  # the knots of the input side
    k = torch.searchsorted(src.contiguous(), xc.detach().reshape(-1).contiguous(), right=True).reshape(x.shape) - 1
    k = k.clamp(0, len(xk) - 2)
    x0, w = xk[k], xk[k + 1] - xk[k]
    y0, h = yk[k], yk[k + 1] - yk[k]
    d0, d1 = slopes[k], slopes[k + 1]
    s = h / w
    if inverse:
        dy = xc - y0
        a = h * (s - d0) + dy * (d1 + d0 - 2 * s)
        b = h * d0 - dy * (d1 + d0 - 2 * s)
        c = -s * dy
        disc = (b.pow(2) - 4 * a * c).clamp_min(0)
        xi = (2 * c) / (-b - disc.sqrt())
        out = x0 + xi * w
    else:
        xi = (xc - x0) / w
        num = h * (s * xi.pow(2) + d0 * xi * (1 - xi))
        out = y0 + num / (s + (d1 + d0 - 2 * s) * xi * (1 - xi))
    denom = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
    deriv = s.pow(2) * (d1 * xi.pow(2) + 2 * s * xi * (1 - xi) + d0 * (1 - xi).pow(2)) / denom.pow(2)
    logdet = torch.log(deriv) * (-1 if inverse else 1)
    return torch.where(inside, out, x), torch.where(inside, logdet, torch.zeros_like(logdet))

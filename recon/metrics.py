"""Quality metrics of a reconstruction against ground truth (docs/reconstruction.md, Metrics).

Two protocols:

* ``absolute``: Δn in its own units; PSNR and SSIM use the range of the truth as
  the data range.
* ``published``: the FDT papers' protocol: the prediction is clipped at 0 and
  divided by its maximum, the truth min-max normalised; PSNR = 20·log10(1/RMSE)
  and SSIM averaged over z-slices.

SSIM is the Gaussian-window SSIM of :mod:`.losses`, computed per z-slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .losses import gaussian_window, ssim_map


@dataclass(frozen=True)
class VolumeScores:
    """PSNR (dB) and SSIM of a Δn volume against ground truth."""
    psnr_db: float
    ssim: float


def _slice_ssim(pred: np.ndarray, truth: np.ndarray, data_range: float) -> float:
    """Mean SSIM over z-slices of two ``[Z, Y, X]`` volumes."""
    a = torch.as_tensor(np.ascontiguousarray(pred), dtype=torch.float64)
    b = torch.as_tensor(np.ascontiguousarray(truth), dtype=torch.float64)
    win = min(11, a.shape[-1], a.shape[-2])
    win -= 1 - win % 2
    window = gaussian_window(win, 1.5, dtype=torch.float64)
    return float(ssim_map(a, b, float(data_range), window).mean())


def absolute_scores(pred: np.ndarray, truth: np.ndarray) -> VolumeScores:
    """PSNR/SSIM in Δn units, data range = range of the truth."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    data_range = float(truth.max() - truth.min()) or 1.0
    mse = float(np.mean((pred - truth) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)
    return VolumeScores(psnr, _slice_ssim(pred, truth, data_range))


def published_scores(pred: np.ndarray, truth: np.ndarray) -> VolumeScores:
    """PSNR/SSIM under the published FDT protocol (normalised volumes, range 1)."""
    p = np.clip(np.asarray(pred, dtype=np.float64), 0, None)
    p = p / p.max() if p.max() > 0 else p
    t = np.asarray(truth, dtype=np.float64)
    span = t.max() - t.min()
    t = (t - t.min()) / span if span > 0 else np.zeros_like(t)
    rmse = float(np.sqrt(np.mean((p - t) ** 2)))
    psnr = float("inf") if rmse == 0 else 20 * np.log10(1.0 / rmse)
    return VolumeScores(psnr, _slice_ssim(p, t, 1.0))


def image_psnr(predicted: np.ndarray, measured: np.ndarray) -> float:
    """PSNR (dB) of images ``[V, Y, X]`` after per-view least-squares gain and offset.

    Data range = range of the measured images; the fit removes the unknown
    brightness and background of a held-out bead.
    """
    p = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)
    m = np.asarray(measured, dtype=np.float64).reshape(len(measured), -1)
    fitted = np.empty_like(p)
    for v in range(len(p)):
        design = np.stack([p[v], np.ones_like(p[v])], 1)
        coef, *_ = np.linalg.lstsq(design, m[v], rcond=None)
        fitted[v] = design @ coef
    mse = float(np.mean((fitted - m) ** 2))
    data_range = float(m.max() - m.min()) or 1.0
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)

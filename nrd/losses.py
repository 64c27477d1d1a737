"""The segmentation loss: pixel-wise cross-entropy with an ignore label, and its reduction as an explicit setting.

Two reductions of the per-pixel losses (ignored pixels contribute 0 to the sum in both):

- ``official``: the mean over *all* pixels, ignored ones counted as 0, as mmseg 0.10's ``cross_entropy`` does (per
  pixel losses with ``reduction='none'`` then a plain mean; the official NRD code uses it). The default.
- ``valid``: the mean over the valid (not ignored) pixels only, as ``torch.nn.CrossEntropyLoss(ignore_index=...)``;
  its gradients are larger by 1 / (valid fraction). A batch without any valid pixel gives 0 (not NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nrd.errors import InvalidHyperparameterError

LOSS_REDUCTIONS = ("official", "valid")
DEFAULT_LOSS_REDUCTION = "official"


def check_loss_reduction(reduction: object, owner: str = "segmentation_loss") -> str:
    if reduction not in LOSS_REDUCTIONS:
        raise InvalidHyperparameterError(owner, "loss_reduction", reduction, f"one of {', '.join(LOSS_REDUCTIONS)}")
    return reduction


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    reduction: str = DEFAULT_LOSS_REDUCTION,
) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, K, H, W) against integer ``labels`` (B, H, W), pixels labelled
    ``ignore_index`` ignored, reduced as ``reduction`` (see the module docstring). Returns a scalar."""
    check_loss_reduction(reduction)
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    if reduction == "official":
        return per_pixel.mean()
    valid = (labels != ignore_index).sum()
    return per_pixel.sum() / valid.clamp(min=1)

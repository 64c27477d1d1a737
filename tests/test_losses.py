"""The segmentation loss's two reductions on a hand-made case with ignored pixels (exact values)."""

from __future__ import annotations

import math

import pytest
import torch

from nrd.errors import InvalidHyperparameterError
from nrd.losses import LOSS_REDUCTIONS, segmentation_loss


def hand_case():
    """Three pixels, two classes: logits (0, 0) labelled 0 → loss ln 2; logits (0, ln 3) labelled 1 → loss
    −ln(3/4) = ln(4/3); a third pixel labelled 255 (ignored) whose logits would cost a lot if it were counted."""
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [50.0, -50.0]], dtype=torch.float64)
    logits = logits.T.reshape(1, 2, 1, 3)  # (B, K, H, W)
    labels = torch.tensor([[[0, 1, 255]]])
    return logits, labels


def test_official_reduction_averages_over_all_pixels_ignored_ones_counting_zero():
    logits, labels = hand_case()
    loss = segmentation_loss(logits, labels, ignore_index=255, reduction="official")
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 3, rel=1e-12)  # = ln(8/3) / 3


def test_valid_reduction_averages_over_valid_pixels():
    logits, labels = hand_case()
    loss = segmentation_loss(logits, labels, ignore_index=255, reduction="valid")
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-12)
    # The same as PyTorch's own CrossEntropyLoss with ignore_index (its "mean" is over valid pixels).
    assert loss.item() == pytest.approx(torch.nn.CrossEntropyLoss(ignore_index=255)(logits, labels).item(), rel=1e-12)


def test_default_is_official_and_all_ignored_gives_zero():
    logits, labels = hand_case()
    assert segmentation_loss(logits, labels).item() == segmentation_loss(logits, labels, reduction="official").item()
    ignored = torch.full_like(labels, 255)
    for reduction in LOSS_REDUCTIONS:
        assert segmentation_loss(logits, ignored, reduction=reduction).item() == 0.0


def test_unknown_reduction_is_a_named_error():
    logits, labels = hand_case()
    with pytest.raises(InvalidHyperparameterError, match=r"loss_reduction.*official, valid"):
        segmentation_loss(logits, labels, reduction="mean")

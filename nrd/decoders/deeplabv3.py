"""DeepLabV3 (Chen et al. 2017): dilated encoder + plain ASPP + classifier, the "dilated encoder" baseline."""

from __future__ import annotations

from nrd.decoders.common import ClassifierDecoder


class DeepLabV3Decoder(ClassifierDecoder):
    """DeepLabV3 head: plain (not separable) ASPP with dilations (12, 24, 36) on an output-stride-8 encoder, a 1×1
    classifier and bilinear ×8 up-sampling. (B, C, H/8, W/8) → (B, K, H, W). Its cost is dominated by running the
    encoder's last stages and the ASPP at stride 8, which is what NRD avoids."""

    separable_context = False
    default_output_stride = 8

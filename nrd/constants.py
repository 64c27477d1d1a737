"""Plain values of nrd that the command line needs before any model or data set exists (argument defaults, the
names its ``--help`` lists), in a module that imports nothing, so that building the parser does not import torch.

The registries live beside their classes: ``nrd.decoders.DECODERS``, ``nrd.encoders.ENCODERS``,
``nrd.data.DATASETS`` and ``nrd.inference.MODES``; tests/test_constants.py keeps their keys equal to the names here,
in the same order. ``IGNORE_INDEX`` and ``TRIMAP_WIDTHS`` are defined here only: ``nrd.data.base`` and
``nrd.metrics`` import them from this module.
"""

DECODER_NAMES = ("nrd", "deeplabv3plus", "bilinear", "dupsampling", "deeplabv3")
ENCODER_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50_v1c", "resnet101_v1c")
DATASET_NAMES = (
    "cityscapes",
    "ade20k",
    "pascal_context",
    "pascal_context59",
    "camvid",
    "idd_lite",
    "siftflow",
    "synthetic",
)
INFERENCE_MODES = ("whole", "slide", "msflip")

IGNORE_INDEX = 255  # the label value of pixels never counted (void, unlabelled)
TRIMAP_WIDTHS = (1, 2, 4, 8, 16, 32)  # px: the default band widths of the trimap mIoU curve

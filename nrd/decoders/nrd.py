"""NRD: Dynamic Neural Representational Decoder (Zhang, Liu, Tian, Shen, NeurIPS 2021, arXiv 2107.14428)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nrd.decoders.common import (
    ContextModule,
    ConvBNReLU,
    Decoder,
    check_positive,
    init_conv_module,
    is_int,
    resolve_dilations,
)
from nrd.errors import InvalidHyperparameterError

COORD_MODES = ("topleft", "centred")


def mlp_layer_shapes(in_channels: int, dyn_channels: int, num_classes: int, mlp_layers: int) -> list[tuple[int, int]]:
    """(out, in) of each layer of g_θ: in → D, (layers − 2) × D → D, D → K."""
    widths = [in_channels] + [dyn_channels] * (mlp_layers - 1) + [num_classes]
    return [(widths[i + 1], widths[i]) for i in range(mlp_layers)]


def num_dynamic_params(layer_shapes: list[tuple[int, int]]) -> int:
    """P, the number of generated parameters per coarse location: every layer's weights and biases."""
    return sum(out * (inp + 1) for out, inp in layer_shapes)


def split_dynamic_params(
    params: torch.Tensor, layer_shapes: list[tuple[int, int]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut (N, P) generated parameters into per-layer (weight (N, out, in), bias (N, out)).

    Layout inside P (as released): w0, b0, w1, b1, …; weights output-major, element (o, i) at o·in + i.
    """
    layers, offset = [], 0
    for out, inp in layer_shapes:
        weight = params[:, offset : offset + out * inp].reshape(-1, out, inp)
        offset += out * inp
        bias = params[:, offset : offset + out]
        offset += out
        layers.append((weight, bias))
    return layers


def dynamic_mlp(inputs: torch.Tensor, params: torch.Tensor, layer_shapes: list[tuple[int, int]]) -> torch.Tensor:
    """Apply each coarse location's MLP to its own patch of ``inputs``.

    inputs: (B, C, h·f, w·f) per-pixel MLP inputs; params: (B, P, h, w) generated parameters. Returns
    (B, K, h·f, w·f). Each location's f×f pixels are gathered into one (C, f²) matrix and multiplied by that
    location's (out, in) weights with batched matmuls: the up-sampled (B, P, h·f, w·f) parameter maps are never built.
    Each layer's weights are made contiguous first (a copy of N·out·in values): CPU bmm is ~8× slower on slices
    strided by P.
    """
    batch, channels, height, width = inputs.shape
    coarse_h, coarse_w = params.shape[-2:]
    factor = height // coarse_h
    if height != coarse_h * factor or width != coarse_w * factor:
        raise ValueError(f"inputs {tuple(inputs.shape)} are not a whole number of patches of params {params.shape}")
    patches = (
        inputs.reshape(batch, channels, coarse_h, factor, coarse_w, factor)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(batch * coarse_h * coarse_w, channels, factor * factor)
    )
    per_location = params.permute(0, 2, 3, 1).reshape(batch * coarse_h * coarse_w, -1)
    layers = split_dynamic_params(per_location, layer_shapes)
    hidden = patches
    for index, (weight, bias) in enumerate(layers):
        hidden = torch.bmm(weight.contiguous(), hidden) + bias.unsqueeze(-1)
        if index < len(layers) - 1:
            hidden = torch.relu(hidden)
    classes = hidden.shape[1]
    return (
        hidden.reshape(batch, coarse_h, coarse_w, classes, factor, factor)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(batch, classes, height, width)
    )


def patch_coordinates(
    height: int, width: int, factor: int, mode: str, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(2, height, width) x then y position of every pixel inside its f×f patch.

    ``topleft`` (as released): {0, 1/f, …, (f−1)/f} from the patch's top-left corner; ``centred``: the same
    shifted so that the patch centre is 0, i.e. (i + 0.5)/f − 0.5.
    """
    offset = 0.0 if mode == "topleft" else 0.5 / factor - 0.5
    xs = (torch.arange(width, device=device) % factor).to(dtype) / factor + offset
    ys = (torch.arange(height, device=device) % factor).to(dtype) / factor + offset
    return torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)])


def static_base_init(layer_shapes: list[tuple[int, int]]) -> torch.Tensor:
    """A flat (P,) parameter vector in the generated layout (w0, b0, w1, b1, …) holding an ordinary MLP: each layer
    initialised as PyTorch's ``nn.Linear`` (Kaiming-uniform weights with a = √5, i.e. U(±1/√fan_in), and bias
    U(±1/√fan_in)), drawn from the global RNG."""
    pieces = []
    for out, inp in layer_shapes:
        layer = nn.Linear(inp, out)
        pieces += [layer.weight.detach().reshape(-1), layer.bias.detach()]
    return torch.cat(pieces)


class NRDDecoder(Decoder):
    """NRD decoder (paper §3; NRD_NOTES §2): every coarse location predicts the weights of a tiny MLP g_θ that
    renders its f×f patch of the label map from per-pixel coordinates and a low-level guidance map.

    Shapes for an input (B, 3, H, W) with an output-stride-32 encoder and ``patch_factor`` f = 8:
    context (B, 512, H/32, W/32) → controller (B, P, H/32, W/32), with P = (2+G)·D + D + (L−2)(D² + D) + D·K + K
    (576 + 17K for the defaults); guidance (B, G, H/4, W/4) from encoder stage ``guidance_stage``; coordinates (B, 2,
    H/4, W/4); [x, y, guidance] → one shared BatchNorm → g_θ per pixel → (B, K, H/4, W/4) → bilinear to the output.

    With other factors g_θ runs at stride (context stride / f), the guidance map being resized to that grid.

    Initialisation (official ``DynHead``): the controller's last conv ("generator") is Xavier-normal / P with zero
    bias, so the generated MLPs start tiny; every other conv as mmcv's ``ConvModule`` (Kaiming-normal fan_out, bias
    0). Because g_θ multiplies three such ~1e-3 matrices, early gradients barely reach w0 and w1 and for hundreds of
    iterations the logits are constant inside each patch (the "saddle", NRD_NOTES §7).

    ``static_base`` (off by default; not in the paper): a labelled way out of that saddle. The generator's bias is a
    learned parameter vector shared by all locations, so θ_i = θ_base + Δθ_i with θ_base = the bias and Δθ_i = W·h_i
    the dynamic part. With ``static_base`` θ_base starts as an ordinary MLP (each layer of g_θ initialised as
    ``nn.Linear``: Kaiming-uniform weights, uniform bias, bound 1/√fan_in) instead of zeros, while Δθ_i keeps the
    official small init: at step 0 g_θ is a real shared MLP over coordinates and guidance and the dynamic part grows
    from there. No parameter, MAC or memory is added (the bias was already there); only its starting value changes.
    """

    def __init__(
        self,
        *,
        encoder_channels: tuple[int, ...],
        encoder_strides: tuple[int, ...],
        num_classes: int,
        dyn_channels: int = 16,
        guidance_channels: int = 16,
        mlp_layers: int = 3,
        patch_factor: int = 8,
        guidance_stage: int = 1,
        coord_mode: str = "topleft",
        controller_channels: int = 512,
        guidance_hidden_channels: int = 48,
        context_channels: int = 512,
        context_dilations: tuple[int, ...] | None = None,
        static_base: bool = False,
    ):
        super().__init__(encoder_channels, encoder_strides, num_classes)
        owner = type(self).__name__
        check_positive(
            owner,
            dyn_channels=dyn_channels,
            guidance_channels=guidance_channels,
            controller_channels=controller_channels,
            guidance_hidden_channels=guidance_hidden_channels,
            context_channels=context_channels,
        )
        if not is_int(mlp_layers) or mlp_layers not in (2, 3, 4):
            raise InvalidHyperparameterError(owner, "mlp_layers", mlp_layers, "2, 3 or 4")
        stride = self.context_stride
        if not is_int(patch_factor) or patch_factor < 2 or patch_factor & (patch_factor - 1) or stride % patch_factor:
            raise InvalidHyperparameterError(
                owner,
                "patch_factor",
                patch_factor,
                f"a power of two that divides the encoder output stride {stride} (8, 16 or 32 at stride 32)",
            )
        if not is_int(guidance_stage) or guidance_stage not in range(1, len(encoder_channels) + 1):
            raise InvalidHyperparameterError(
                owner, "guidance_stage", guidance_stage, f"an encoder stage in 1..{len(encoder_channels)}"
            )
        if coord_mode not in COORD_MODES:
            raise InvalidHyperparameterError(owner, "coord_mode", coord_mode, f"one of {', '.join(COORD_MODES)}")
        if not isinstance(static_base, bool):
            raise InvalidHyperparameterError(owner, "static_base", static_base, "true or false")

        self.patch_factor = patch_factor
        self.guidance_stage = guidance_stage
        self.coord_mode = coord_mode
        self.static_base = static_base
        self.layer_shapes = mlp_layer_shapes(2 + guidance_channels, dyn_channels, num_classes, mlp_layers)
        self.num_dynamic_params = num_dynamic_params(self.layer_shapes)

        dilations = resolve_dilations(owner, context_dilations, stride)
        self.context = ContextModule(encoder_channels[-1], context_channels, dilations, separable=True)
        self.controller = nn.Sequential(
            ConvBNReLU(context_channels, controller_channels, 3),
            nn.Conv2d(controller_channels, self.num_dynamic_params, 1),
        )
        self.guidance = nn.Sequential(
            ConvBNReLU(encoder_channels[guidance_stage - 1], guidance_hidden_channels, 3),
            init_conv_module(nn.Conv2d(guidance_hidden_channels, guidance_channels, 1)),  # a ConvModule without norm
        )
        self.input_norm = nn.BatchNorm2d(2 + guidance_channels)
        self._init_controller()

    def _init_controller(self) -> None:
        generator = self.controller[-1]
        nn.init.xavier_normal_(generator.weight)
        with torch.no_grad():
            generator.weight.div_(self.num_dynamic_params)
        nn.init.zeros_(generator.bias)
        if self.static_base:
            with torch.no_grad():
                generator.bias.copy_(static_base_init(self.layer_shapes))

    def mlp_inputs(self, features: list[torch.Tensor], coarse_size: tuple[int, int]) -> torch.Tensor:
        """Normalised per-pixel inputs of g_θ, (B, 2 + G, h·f, w·f): coordinates then guidance."""
        fine_size = (coarse_size[0] * self.patch_factor, coarse_size[1] * self.patch_factor)
        guidance = self.guidance(features[self.guidance_stage - 1])
        if guidance.shape[-2:] != fine_size:
            guidance = F.interpolate(guidance, size=fine_size, mode="bilinear", align_corners=False)
        coords = patch_coordinates(*fine_size, self.patch_factor, self.coord_mode, guidance.device, guidance.dtype)
        coords = coords.unsqueeze(0).expand(guidance.shape[0], -1, -1, -1)
        return self.input_norm(torch.cat([coords, guidance], dim=1))

    def decode(self, features, context, output_size):
        params = self.controller(context)
        inputs = self.mlp_inputs(features, context.shape[-2:])
        logits = dynamic_mlp(inputs, params, self.layer_shapes)
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return (
            f"P={self.num_dynamic_params}, layers={self.layer_shapes}, patch_factor={self.patch_factor}, "
            f"guidance_stage={self.guidance_stage}, coord_mode={self.coord_mode!r}, "
            f"static_base={self.static_base}"
        )

"""GPU paths of the model library. They run only where CUDA is available (the lent GPU machine); on CPU-only
machines, CI included, they are skipped with that reason: nothing here is mocked."""

from __future__ import annotations

import pytest
import torch

from nrd import DECODERS, create_model
from nrd.cost import measure_latency
from nrd.decoders.nrd import dynamic_mlp, mlp_layer_shapes, num_dynamic_params

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def test_dynamic_mlp_on_cuda_equals_cpu():
    torch.manual_seed(0)
    shapes = mlp_layer_shapes(18, 16, 19, 3)
    params = 0.1 * torch.randn(2, num_dynamic_params(shapes), 4, 6)
    inputs = torch.randn(2, 18, 32, 48)
    on_gpu = dynamic_mlp(inputs.cuda(), params.cuda(), shapes).cpu()
    torch.testing.assert_close(on_gpu, dynamic_mlp(inputs, params, shapes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_bf16_autocast_channels_last_train_step(decoder):
    torch.manual_seed(0)
    model = create_model(decoder, "resnet50_v1c", 19).cuda().to(memory_format=torch.channels_last).train()
    images = torch.randn(2, 3, 128, 256, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, aux = model.forward_with_aux(images)
        loss = logits.float().square().mean() + 0.4 * aux.float().square().mean()
    loss.backward()
    assert logits.shape == (2, 19, 128, 256) and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_latency_on_cuda_is_synchronised():
    model = create_model("nrd", "resnet18", 19)
    latency = measure_latency(model, (1, 3, 256, 512), levels=("decoder", "model"), device="cuda", repeats=5)
    assert 0 < latency["decoder"]["p50"] < latency["model"]["p50"]

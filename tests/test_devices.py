import numpy as np
import pytest
import torch

from inspector import devices
from inspector.devices import amp_dtype, autocast, channels_last, to_device
from inspector.model import build_model


def test_cpu_mixed_precision_only_where_the_cpu_computes_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert amp_dtype(cpu) is torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    assert amp_dtype(cpu) is None
    with autocast(cpu, True):
        assert not torch.is_autocast_enabled("cpu")


def test_cpu_bf16_detection_reads_torchs_cpu_probes(monkeypatch):
    for avx512_bf16, amx, expected in (
        (False, False, False),
        (True, False, True),
        (False, True, True),
    ):
        devices.cpu_has_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert devices.cpu_has_bf16() is expected
    monkeypatch.undo()
    devices.cpu_has_bf16.cache_clear()


def test_channels_last_model_gives_the_same_logits():
    torch.manual_seed(0)
    model = build_model(arch="vgg11_bn", num_classes=3, width=0.125).eval()
    x = torch.rand(2, 3, 64, 80)
    with torch.inference_mode():
        plain = model(x)
        nhwc = channels_last(model)
        batch = to_device(x, torch.device("cpu"))
        assert batch.is_contiguous(memory_format=torch.channels_last)
        fast = nhwc(batch)
    np.testing.assert_allclose(fast.numpy(), plain.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not devices.cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_logits_stay_close_to_float32():
    torch.manual_seed(0)
    model = channels_last(build_model(arch="vgg11_bn", num_classes=3, width=0.125).eval())
    x = to_device(torch.rand(4, 3, 64, 64), torch.device("cpu"))
    with torch.inference_mode():
        full = model(x).softmax(1)
        with autocast(torch.device("cpu"), True):
            half = model(x).float().softmax(1)
    np.testing.assert_allclose(half.numpy(), full.numpy(), atol=0.03)

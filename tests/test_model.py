import pytest
import torch
from torchvision.models import vgg as tv_vgg

from inspector.errors import ConfigurationError
from inspector.model import (
    ARCHITECTURES,
    ModelSpec,
    build_model,
    count_parameters,
    layer_config,
    model_from_spec,
)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_vgg_builds_and_takes_any_input_size(arch: str) -> None:
    model = build_model(arch=arch, num_classes=4, width=0.125).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 4)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == arch.endswith("_bn")


def test_full_width_features_match_torchvision_layout() -> None:
    ours = build_model(arch="vgg16_bn", num_classes=3).features.state_dict()
    theirs = tv_vgg.vgg16_bn(weights=None).features.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_width_multiplier_scales_channels_and_parameters() -> None:
    cfg, bn = layer_config("vgg11", 0.25)
    assert cfg[:4] == [16, "M", 32, "M"] and not bn
    quarter = count_parameters(build_model(arch="vgg11", num_classes=6, width=0.25))
    # A quarter-width VGG-11 with a GAP head is about 0.6 M parameters.
    assert 500_000 < quarter < 650_000
    full = count_parameters(build_model(arch="vgg11", num_classes=6))
    assert 14 * quarter < full < 18 * quarter


def test_class_activation_maps_are_the_head_applied_to_features() -> None:
    model = build_model(arch="vgg11_bn", num_classes=3, width=0.125).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        logits, cam = model.forward_with_cam(x)
    assert cam.shape == (1, 3, 2, 2)
    # GAP of the CAM plus the bias is the logit: the maps explain the decision exactly.
    assert torch.allclose(cam.mean(dim=(2, 3)) + model.head.bias, logits, atol=1e-5)


def test_stride_16_doubles_the_map_resolution_with_the_same_weights() -> None:
    coarse = build_model(arch="vgg11_bn", num_classes=3, width=0.125).eval()
    fine = build_model(arch="vgg11_bn", num_classes=3, width=0.125, stride=16).eval()
    # Only the last max-pool goes: a stride-32 model's weights load as they are.
    fine.load_state_dict(coarse.state_dict())
    assert count_parameters(fine) == count_parameters(coarse)
    assert len(fine.conv_blocks()) == 5
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        _, cam32 = coarse.forward_with_cam(x)
        logits, cam16 = fine.forward_with_cam(x)
    assert cam32.shape == (1, 3, 2, 3) and cam16.shape == (1, 3, 4, 6)
    assert torch.allclose(cam16.mean(dim=(2, 3)) + fine.head.bias, logits, atol=1e-5)
    # The last max-pool of the fine maps is the coarse model's feature map.
    assert torch.allclose(
        torch.nn.functional.max_pool2d(fine.features(x), 2), coarse.features(x), atol=1e-6
    )


def test_stride_is_part_of_the_spec_and_rebuilds() -> None:
    spec = build_model(arch="vgg11_bn", num_classes=3, width=0.125, stride=16).spec
    assert spec.stride == 16
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec.from_dict({"arch": "vgg11", "num_classes": 2}).stride == 32  # older models
    rebuilt = model_from_spec(spec)
    assert rebuilt.spec == spec
    with pytest.raises(ConfigurationError, match="stride must be one of"):
        ModelSpec("vgg11", 2, stride=8)


@pytest.mark.parametrize("padding", ["reflect", "replicate"])
def test_padding_continues_the_image_beyond_its_edge(padding: str) -> None:
    zeros = build_model(arch="vgg11_bn", num_classes=3, width=0.125).eval()
    model = build_model(arch="vgg11_bn", num_classes=3, width=0.125, padding=padding).eval()
    model.load_state_dict(zeros.state_dict())  # the same weights: padding is not a weight
    flat = torch.full((1, 3, 96, 128), 0.7)
    with torch.inference_mode():
        _, cam = model.forward_with_cam(flat)
        _, cam_zeros = zeros.forward_with_cam(flat)
    # A uniform surface stays uniform to the edge: no location is told apart by the frame.
    assert torch.allclose(cam, cam[..., :1, :1].expand_as(cam), atol=1e-5)
    assert not torch.allclose(cam_zeros, cam_zeros[..., :1, :1].expand_as(cam_zeros), atol=1e-3)
    spec = model.spec
    assert spec.padding == padding and ModelSpec.from_dict(spec.to_dict()) == spec
    assert model_from_spec(spec).features[0].padding_mode == padding
    assert ModelSpec.from_dict({"arch": "vgg11", "num_classes": 2}).padding == "zeros"
    with pytest.raises(ConfigurationError, match="padding must be one of"):
        ModelSpec("vgg11", 2, padding="circular")


def test_freeze_blocks_stops_gradients_in_those_blocks_only() -> None:
    model = build_model(arch="vgg11_bn", num_classes=2, width=0.125)
    assert len(model.conv_blocks()) == 5
    model.freeze_blocks(2)
    frozen = [p.requires_grad for b in model.conv_blocks()[:2] for m in b for p in m.parameters()]
    free = [p.requires_grad for b in model.conv_blocks()[2:] for m in b for p in m.parameters()]
    assert frozen and not any(frozen)
    assert free and all(free)
    with pytest.raises(ConfigurationError, match="has 5 conv blocks"):
        model.freeze_blocks(6)


def test_bad_architecture_and_width_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown architecture 'vgg12'"):
        build_model(arch="vgg12", num_classes=2)
    with pytest.raises(ConfigurationError, match="width"):
        build_model(arch="vgg11", num_classes=2, width=0.0)
    with pytest.raises(ConfigurationError, match="at least 2 classes"):
        build_model(arch="vgg11", num_classes=1)

"""ResNet-101 backbone: torchvision -> transformers conversion, preprocessing and region extraction.

torchvision is not installable here, so its ResNet-101 is described from the architecture
(key names and shapes generated below) and its forward is written with torch.nn.functional;
the converted transformers model must reproduce it numerically.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import torchvision_state_dict
from PIL import Image
from safetensors.torch import save_file
from transformers import ResNetConfig, ResNetModel

from modeling_scegg.data.backbone import (
    ImagePreprocessor,
    RegionFeatureExtractor,
    backbone_name,
    build_resnet101,
    convert_torchvision_resnet_state_dict,
    describe_backbone,
    load_torchvision_state_dict,
    model_fingerprint,
    resnet101_config,
)
from modeling_scegg.errors import UserError

DEPTHS = (3, 4, 23, 3)
PLANES = (64, 128, 256, 512)
EXPANSION = 4
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _bn_entries(prefix: str, channels: int) -> dict[str, tuple]:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def torchvision_resnet101_shapes() -> dict[str, tuple]:
    """Key -> shape of torchvision's ``resnet101().state_dict()``, in its order."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn_entries("bn1", 64)}
    inplanes = 64
    for stage, (depth, planes) in enumerate(zip(DEPTHS, PLANES), start=1):
        for block in range(depth):
            p = f"layer{stage}.{block}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            shapes.update(_bn_entries(f"{p}.bn1", planes))
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes.update(_bn_entries(f"{p}.bn2", planes))
            shapes[f"{p}.conv3.weight"] = (planes * EXPANSION, planes, 1, 1)
            shapes.update(_bn_entries(f"{p}.bn3", planes * EXPANSION))
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * EXPANSION, inplanes, 1, 1)
                shapes.update(_bn_entries(f"{p}.downsample.1", planes * EXPANSION))
            inplanes = planes * EXPANSION
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


def random_torchvision_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random but well-scaled weights with non-trivial BN statistics (so BN mapping errors show)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in torchvision_resnet101_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # BN weight; small on bn3 / downsample keeps 33 residual sums bounded
            scale = 0.2 if ("bn3" in key or "downsample" in key) else 1.0
            state[key] = scale * (torch.rand(shape, generator=generator) + 0.5)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return state


def _bn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"],
        training=False, eps=1e-5,
    )


def tv_stem(x: torch.Tensor, sd: dict) -> torch.Tensor:
    """torchvision: conv1 -> bn1 -> relu -> maxpool."""
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def tv_bottleneck(x: torch.Tensor, sd: dict, prefix: str, stride: int) -> torch.Tensor:
    """torchvision v1.5 Bottleneck: the stride sits on conv2 (3x3) and on the downsample conv."""
    out = F.relu(_bn(F.conv2d(x, sd[f"{prefix}.conv1.weight"]), sd, f"{prefix}.bn1"))
    out = F.relu(_bn(F.conv2d(out, sd[f"{prefix}.conv2.weight"], stride=stride, padding=1), sd, f"{prefix}.bn2"))
    out = _bn(F.conv2d(out, sd[f"{prefix}.conv3.weight"]), sd, f"{prefix}.bn3")
    if f"{prefix}.downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[f"{prefix}.downsample.0.weight"], stride=stride), sd, f"{prefix}.downsample.1")
    return F.relu(out + x)


def tv_forward(x: torch.Tensor, sd: dict) -> torch.Tensor:
    """torchvision ResNet-101 up to layer4 (the conv map SC-EGG uses)."""
    x = tv_stem(x, sd)
    for stage, depth in enumerate(DEPTHS, start=1):
        for block in range(depth):
            stride = 2 if (block == 0 and stage > 1) else 1
            x = tv_bottleneck(x, sd, f"layer{stage}.{block}", stride)
    return x


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    return random_torchvision_state_dict()


@pytest.fixture(scope="module")
def converted_model(tv_state) -> ResNetModel:
    model = ResNetModel(resnet101_config()).eval()
    model.load_state_dict(convert_torchvision_resnet_state_dict(tv_state), strict=True)
    return model


def tiny_resnet(seed: int = 0) -> ResNetModel:
    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="bottleneck")
    return ResNetModel(config).eval()


def test_generated_key_list_is_torchvision_resnet101():
    shapes = torchvision_resnet101_shapes()
    # torchvision's resnet101 state dict has 626 entries (624 conv/BN + fc weight/bias).
    assert len(shapes) == 626
    assert shapes["layer3.22.bn3.running_var"] == (1024,)
    assert shapes["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)


def test_config_is_resnet101_with_stride_on_3x3():
    config = resnet101_config()
    assert list(config.depths) == [3, 4, 23, 3]
    assert list(config.hidden_sizes) == [256, 512, 1024, 2048]
    assert config.embedding_size == 64 and config.layer_type == "bottleneck"
    assert config.downsample_in_bottleneck is False


def test_conversion_fills_every_key_and_drops_fc(tv_state):
    converted = convert_torchvision_resnet_state_dict(tv_state)
    with torch.device("meta"):
        target = ResNetModel(resnet101_config()).state_dict()
    assert set(converted) == set(target)
    assert not any(k.startswith("fc") for k in converted)
    assert converted["embedder.embedder.convolution.weight"] is tv_state["conv1.weight"]
    assert converted["encoder.stages.2.layers.22.layer.2.normalization.running_var"] is tv_state["layer3.22.bn3.running_var"]
    assert converted["encoder.stages.3.layers.0.shortcut.convolution.weight"] is tv_state["layer4.0.downsample.0.weight"]


def test_converted_stem_matches_torchvision_stem(tv_state, converted_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ours = converted_model.embedder(x)
    torch.testing.assert_close(ours, tv_stem(x, tv_state), rtol=1e-5, atol=1e-5)


def test_stride_sits_on_the_3x3_conv_like_torchvision(tv_state, converted_model):
    x = torch.randn(1, 256, 16, 16)
    with torch.inference_mode():
        ours = converted_model.encoder.stages[1].layers[0](x.clone())
    expected = tv_bottleneck(x, tv_state, "layer2.0", stride=2)
    assert ours.shape == (1, 512, 8, 8)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # ResNet v1 (stride on the 1x1 conv) is a different network: the check above can tell.
    v1_config = resnet101_config()
    v1_config.downsample_in_bottleneck = True
    with torch.device("meta"):
        v1 = ResNetModel(v1_config)
    v1.load_state_dict(convert_torchvision_resnet_state_dict(tv_state, v1_config), assign=True)
    with torch.inference_mode():
        other = v1.eval().encoder.stages[1].layers[0](x.clone())
    assert not torch.allclose(other, expected, rtol=1e-3, atol=1e-3)


def test_full_converted_network_matches_torchvision_forward(tv_state, converted_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ours = converted_model(x).last_hidden_state
    expected = tv_forward(x, tv_state)
    assert ours.shape == (2, 2048, 2, 2)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_conversion_errors_list_missing_unexpected_and_misshaped(tv_state):
    broken = dict(tv_state)
    del broken["layer3.5.bn2.running_mean"]
    broken["layer5.0.conv1.weight"] = torch.zeros(1)
    broken["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(ValueError) as info:
        convert_torchvision_resnet_state_dict(broken)
    message = str(info.value)
    assert "encoder.stages.2.layers.5.layer.1.normalization.running_mean" in message
    assert "encoder.stages.4.layers.0.layer.0.convolution.weight" in message
    assert "encoder.stages.0.layers.0.layer.0.convolution.weight: expected (64, 64, 1, 1), got (64, 64, 3, 3)" in message


def test_resnet50_file_is_refused(tv_state):
    resnet50 = {k: v for k, v in tv_state.items() if not k.startswith("layer3.") or int(k.split(".")[1]) < 6}
    with pytest.raises(ValueError, match="missing keys"):
        convert_torchvision_resnet_state_dict(resnet50)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_build_from_torchvision_file(tmp_path, tv_state, converted_model, suffix):
    path = tmp_path / f"resnet101{suffix}"
    if suffix == ".safetensors":
        save_file(tv_state, path)
    else:
        torch.save(tv_state, path)
    model = build_resnet101(path)
    assert not model.training
    assert model_fingerprint(model) == model_fingerprint(converted_model)


class _Exploit:
    """Unpickling this would create a file: weights_only=True must refuse it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_pth_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Exploit(str(marker))}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_torchvision_state_dict(path)
    assert not marker.exists()


def test_missing_weights_file_and_unknown_suffix(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_resnet101(tmp_path / "absent.pth")
    other = tmp_path / "weights.h5"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported weights file"):
        build_resnet101(other)


def test_offline_hub_id_gives_download_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE, "tests must run offline (tests/conftest.py)"
    with pytest.raises(UserError, match="hf download scegg-test/no-such-resnet") as caught:
        build_resnet101("scegg-test/no-such-resnet")
    assert "not in the local Hugging Face cache" in caught.value.cause


def test_local_transformers_checkpoint_folder(tmp_path):
    model = tiny_resnet()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = build_resnet101(tmp_path / "ckpt")  # a transformers checkpoint says what it is
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert model_fingerprint(build_resnet101(tmp_path / "ckpt", architecture=model.config)) == model_fingerprint(model)
    with pytest.raises(UserError, match=r"the backbone .*ckpt is not the expected ResNet\(-101\): .*depths"):
        build_resnet101(tmp_path / "ckpt", architecture=resnet101_config())


def test_timm_style_folder_holds_torchvision_keys(tmp_path):
    """timm's resnet101.* repos: config.json with "architecture" and torchvision key names in
    model.safetensors, BatchNorm counters absent as in torchvision's old files."""
    model = tiny_resnet()
    tv_state = {k: v for k, v in torchvision_state_dict(model).items() if "num_batches_tracked" not in k}
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "config.json").write_text('{"architecture": "resnet101", "num_classes": 1000}')
    save_file(tv_state, tmp_path / "timm" / "model.safetensors")
    loaded = build_resnet101(tmp_path / "timm", architecture=model.config)
    assert model_fingerprint(loaded) == model_fingerprint(model)
    with pytest.raises(UserError, match=r"timm does not hold ResNet-101 weights.*missing keys"):
        build_resnet101(tmp_path / "timm")
    assert backbone_name(tmp_path / "timm") == "timm" and backbone_name("timm/resnet101.tv_in1k") == "timm/resnet101.tv_in1k"


def _reference_pixels(image: Image.Image, crop: int) -> np.ndarray:
    """torchvision's Resize(crop) / CenterCrop(crop) / ToTensor / Normalize, by hand.

    Resize: short side -> crop, long side truncated; CenterCrop: offset round((size - crop) / 2)
    (Python's round, half to even).
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(crop * long / short)
    size = (crop, new_long) if width <= height else (new_long, crop)
    resized = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    top = int(round((resized.shape[0] - crop) / 2.0))
    left = int(round((resized.shape[1] - crop) / 2.0))
    cropped = resized[top : top + crop, left : left + crop]
    return ((cropped - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


# (40, 44) -> 32 x 35: a margin of 3, where torchvision crops from row 2 and (size - crop) // 2
# would crop from row 1.
@pytest.mark.parametrize("size,mode", [((50, 40), "RGB"), ((40, 44), "RGB"), ((40, 61), "L"), ((97, 64), "RGBA")])
def test_preprocessing_follows_spec(size, mode):
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    image = Image.fromarray(array, mode=mode)
    pixels = RegionFeatureExtractor(tiny_resnet(), crop_size=32, device="cpu").preprocess([image])
    assert pixels.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(pixels[0].numpy(), _reference_pixels(image, 32), atol=1e-5)


def test_preprocessor_refuses_a_crop_larger_than_the_resize():
    with pytest.raises(ValueError, match="crop_size=64, resize_size=32"):
        ImagePreprocessor(crop_size=64, resize_size=32)


def test_resize_then_smaller_crop_like_imagenet_eval():
    image = _images(1)[0]
    pixels = ImagePreprocessor(crop_size=32, resize_size=40)([image])
    assert pixels.shape == (1, 3, 32, 32)
    width, height = image.size  # 50 x 40 -> 50 x 40 at short side 40, crop offsets (4, 9)
    resized = np.asarray(image.resize((50, 40), Image.BILINEAR), dtype=np.float32) / 255.0
    expected = ((resized[4:36, 9:41] - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(pixels[0].numpy(), expected, atol=1e-5)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(n)]


def test_extractor_regions_are_row_major_and_global_is_their_mean():
    model = tiny_resnet()
    extractor = RegionFeatureExtractor(model, crop_size=64, device="cpu")
    images = _images(3)
    features = extractor(images)
    assert features.regions.shape == (3, 4, 32) and features.regions.dtype == np.float32
    assert features.global_.shape == (3, 32)
    with torch.inference_mode():
        feature_map = model(extractor.preprocess(images)).last_hidden_state.numpy()
    height, width = feature_map.shape[2:]
    for h in range(height):
        for w in range(width):
            np.testing.assert_array_equal(features.regions[:, h * width + w], feature_map[:, :, h, w])
    np.testing.assert_allclose(features.global_, feature_map.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_feature_maps_are_the_last_conv_map_the_regions_flatten():
    model = tiny_resnet()
    extractor = RegionFeatureExtractor(model, crop_size=64, device="cpu")
    pixels = extractor.preprocess(_images(2))
    maps = extractor.feature_maps(pixels)
    with torch.inference_mode():
        np.testing.assert_array_equal(maps, model(pixels).last_hidden_state.numpy())
    regions = extractor.extract_pixel_values(pixels).regions
    np.testing.assert_array_equal(maps.reshape(2, 32, -1).transpose(0, 2, 1), regions)


def test_a_built_model_is_named_by_what_it_was_loaded_from(tmp_path):
    model = tiny_resnet()
    assert backbone_name(model) is None and describe_backbone(model) == "the ResNetModel given in Python"
    model.save_pretrained(tmp_path / "my-resnet")
    loaded = ResNetModel.from_pretrained(tmp_path / "my-resnet")
    assert backbone_name(loaded) == "my-resnet"
    assert describe_backbone(loaded) == "the ResNetModel given in Python (my-resnet)"
    assert describe_backbone(tmp_path / "w.pth") == str(tmp_path / "w.pth")


def test_extractor_crop_size_sets_the_grid():
    features = RegionFeatureExtractor(tiny_resnet(), crop_size=96, device="cpu")(_images(1))
    assert features.regions.shape == (1, 9, 32)


def test_bf16_autocast_is_close_to_fp32():
    model = tiny_resnet()
    images = _images(2)
    full = RegionFeatureExtractor(model, crop_size=64, device="cpu")(images)
    half = RegionFeatureExtractor(model, crop_size=64, device="cpu", autocast="bf16")(images)
    assert half.regions.dtype == np.float32
    assert not np.array_equal(full.regions, half.regions)
    np.testing.assert_allclose(half.regions, full.regions, rtol=0.1, atol=0.1 * np.abs(full.regions).max())


def test_unknown_autocast_is_refused():
    with pytest.raises(ValueError, match="autocast"):
        RegionFeatureExtractor(tiny_resnet(), autocast="fp8", device="cpu")


def test_random_resnet101_gives_196_regions_of_2048_at_448():
    features = RegionFeatureExtractor(build_resnet101("random"), device="cpu")(_images(1))
    assert features.regions.shape == (1, 196, 2048)


def test_random_weights_only_when_asked_for_and_reproducible(caplog):
    with pytest.raises(ValueError, match="no backbone weights given.*'random'"):
        build_resnet101(None)
    with caplog.at_level("WARNING"):
        first, second = build_resnet101("random"), build_resnet101("random")
    assert "RANDOM ResNet-101" in caplog.text
    assert model_fingerprint(first) == model_fingerprint(second)

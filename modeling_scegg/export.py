"""A trained model as a folder that runs on pictures: weights, backbone, image processor, pipeline.

A complete folder holds ``config.json`` (sizes, classes, ``backbone_config``, ``auto_map`` for
AutoModel / AutoModelForImageClassification, ``custom_pipelines``), ``model.safetensors`` (SC-EGG
and, once known, the ResNet region backbone under ``backbone.``), ``preprocessor_config.json``
(``SCEGGImageProcessor``) and the four remote-code files, so that
``pipeline("image-classification", model=FOLDER_OR_REPO, trust_remote_code=True)`` works without
this package. A model trained on precomputed region features has no backbone yet;
:func:`attach_backbone` embeds the one its features came from, refusing other weights when the
features' backbone was recorded (``config.feature_backbone``).
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import ResNetModel

from .data.backbone import backbone_id, backbone_name, build_resnet101
from .image_processing_scegg import SCEGGImageProcessor
from .modeling_scegg import SCEGGForImageClassification, SCEGGModel

PACKAGE_DIR = Path(__file__).resolve().parent
PIPELINE_FILE = "pipeline_scegg.py"
CUSTOM_PIPELINES = {
    "image-classification": {
        "impl": "pipeline_scegg.SCEGGImageClassificationPipeline",
        "pt": ["AutoModelForImageClassification"],
        "type": "image",
    }
}


def as_image_model(model: SCEGGModel, config=None,
                   extra_state: dict[str, torch.Tensor] | None = None) -> SCEGGForImageClassification:
    """`model`'s weights (plus `extra_state`, e.g. a backbone) in a SCEGGForImageClassification
    built for `config` (the model's own by default). Weights are shared, not copied."""
    config = copy.deepcopy(config if config is not None else model.config)
    with torch.device("meta"):
        image_model = SCEGGForImageClassification(config)
    state = {**model.state_dict(), **(extra_state or {})}
    image_model.load_state_dict(state, strict=True, assign=True)
    return image_model.eval()


def attach_backbone(
    model: SCEGGModel,
    weights: str | os.PathLike | ResNetModel,
    image_processor: SCEGGImageProcessor | None = None,
) -> SCEGGForImageClassification:
    """`model` with the ResNet `weights` (a torchvision file, a transformers folder / Hub id, a
    built ResNetModel or ``"random"``) as its region backbone.

    Refused when the model records that its region features came from other weights, or when the
    backbone does not give the model's R x D regions on `image_processor`'s crops."""
    resnet = weights.eval() if isinstance(weights, ResNetModel) else build_resnet101(weights)
    name = "the given ResNetModel" if isinstance(weights, ResNetModel) else str(weights)
    fingerprint = backbone_id(resnet)
    recorded = model.config.feature_backbone
    if recorded is not None and recorded != fingerprint:
        raise ValueError(
            f"the model was trained on region features of the backbone {recorded}, but {name} is {fingerprint}: "
            f"its features would not be the ones the model learnt. Attach the backbone the features came from"
        )
    backbone_config = copy.deepcopy(resnet.config)
    backbone_config.out_features = [backbone_config.stage_names[-1]]
    config = copy.deepcopy(model.config)
    config.backbone_config, config.feature_backbone = backbone_config, fingerprint
    if config.feature_backbone_name is None and not isinstance(weights, ResNetModel):
        config.feature_backbone_name = backbone_name(weights)  # a recorded Hub id is kept: same weights
    if backbone_config.hidden_sizes[-1] != config.feature_dim:
        raise ValueError(f"{name}: the backbone's last stage has {backbone_config.hidden_sizes[-1]} channels, "
                         f"the model reads region features of feature_dim={config.feature_dim}")
    backbone_state = {f"backbone.{k}": v for k, v in resnet.state_dict().items()}
    image_model = as_image_model(model, config, backbone_state)
    _check_region_grid(image_model, image_processor or SCEGGImageProcessor(), name)
    return image_model


@torch.no_grad()
def _check_region_grid(model: SCEGGForImageClassification, processor: SCEGGImageProcessor, name: str) -> None:
    crop = processor.crop_size
    pixels = torch.zeros(1, 3, crop.height, crop.width)
    try:
        model.pixel_region_features(pixels)
    except ValueError as error:
        raise ValueError(f"{name} on {crop.height} x {crop.width} crops does not give the model's regions: {error}; "
                         f"pass the crop size the region features were extracted at") from error


def save_model(
    model: SCEGGModel,
    folder: str | os.PathLike,
    image_processor: SCEGGImageProcessor | None = None,
) -> Path:
    """Write the complete folder (see the module docstring), each file atomically.

    `model` is saved as SCEGGForImageClassification (with its backbone, when it has one);
    `image_processor` defaults to the standard 448 crop."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_model = model if isinstance(model, SCEGGForImageClassification) else as_image_model(model)
    image_model.config.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".save-") as scratch:
        image_model.save_pretrained(scratch)
        (image_processor or SCEGGImageProcessor()).save_pretrained(scratch)
        shutil.copyfile(PACKAGE_DIR / PIPELINE_FILE, Path(scratch) / PIPELINE_FILE)
        for written in sorted(Path(scratch).iterdir()):
            os.replace(written, folder / written.name)
    return folder


__all__ = ["CUSTOM_PIPELINES", "as_image_model", "attach_backbone", "save_model"]

"""ResNet-101 region features for SC-EGG, built on transformers' ``ResNetModel``.

SC-EGG reads an image as the grid of its last ResNet-101 conv map: a 448 x 448 crop gives a
2048 x 14 x 14 map, i.e. R = 196 regions of D = 2048 (a 224 crop gives 7 x 7 = 49). The paper used
torchvision's ImageNet weights without fine-tuning. torchvision and timm are not installable next
to this torch, so the network is transformers' ``ResNetModel`` and torchvision checkpoints are
renamed into its layout (:func:`convert_torchvision_resnet_state_dict`); the architectures are the
same ResNet v1.5 (stride on the 3x3 conv of a bottleneck, ``downsample_in_bottleneck=False``).

Weights sources accepted by :func:`build_resnet101` (there is no default: a model that silently
ran on random weights would predict noise while looking fine):

* ``"random"`` (:data:`RANDOM_BACKBONE`): a fixed random initialisation, for tests and benchmarks
  only (the features mean nothing, and at 448 px their magnitude overflows float16 storage). It is
  seeded, so every build gives the same weights and cached features stay consistent.
* a torchvision state dict file: ``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin`` read with
  ``torch.load(weights_only=True)`` (never plain unpickling), e.g. ``resnet101-63fe2227.pth``
  (IMAGENET1K_V1, what the paper's features were computed with).
* a checkpoint folder or Hub id: transformers' ResNet layout (``config.json`` with model_type
  "resnet", e.g. ``"microsoft/resnet-101"``, through ``ResNetModel.from_pretrained``), or a
  torchvision-layout ``model.safetensors`` / ``pytorch_model.bin`` (timm's ``resnet101.*`` repos,
  e.g. ``"timm/resnet101.tv_in1k"``, torchvision's ImageNet weights), downloaded through the Hub
  cache (``hf_hub_download``).

Preprocessing (:class:`ImagePreprocessor`, i.e. the model's ``SCEGGImageProcessor``) follows the
common ZSL region-feature pipeline pixel for pixel: resize the short side to the crop size
(bilinear), centre crop, scale to [0, 1], ImageNet mean/std, RGB, i.e. torchvision's Resize /
CenterCrop / ToTensor / Normalize.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import ResNetConfig, ResNetModel

from ..errors import UserError
from ..image_processing_scegg import SCEGGImageProcessor

DEFAULT_CROP_SIZE = 448
RANDOM_BACKBONE = "random"
_RANDOM_BACKBONE_SEED = 0
TORCH_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin")
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

logger = logging.getLogger(__name__)

_TV_STEM = re.compile(r"^(conv1|bn1)\.(.+)$")
_TV_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv|bn)(\d+)\.(.+)$")
_TV_DOWNSAMPLE = re.compile(r"^layer(\d+)\.(\d+)\.downsample\.([01])\.(.+)$")


def resnet101_config() -> ResNetConfig:
    """The torchvision ResNet-101 architecture in transformers' terms.

    ``downsample_in_bottleneck=False`` puts a stage's stride on the 3x3 conv (ResNet v1.5), as
    torchvision does; with ``True`` the converted weights would run a different network.
    """
    return ResNetConfig(
        num_channels=3,
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=[3, 4, 23, 3],
        layer_type="bottleneck",
        hidden_act="relu",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,
    )


def _convert_key(key: str) -> str | None:
    """Map one torchvision ResNet key to transformers' name; None for the classifier head."""
    if key.startswith("fc."):
        return None
    part = {"conv": "convolution", "bn": "normalization"}
    if match := _TV_STEM.match(key):
        kind, leaf = match.groups()
        return f"embedder.embedder.{part[kind[:-1]]}.{leaf}"
    if match := _TV_BLOCK.match(key):
        stage, block, kind, index, leaf = match.groups()
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(index) - 1}.{part[kind]}.{leaf}"
    if match := _TV_DOWNSAMPLE.match(key):
        stage, block, index, leaf = match.groups()
        module = "convolution" if index == "0" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.shortcut.{module}.{leaf}"
    return key


def convert_torchvision_resnet_state_dict(
    state_dict: dict[str, torch.Tensor], config: ResNetConfig | None = None
) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict into ``ResNetModel``'s layout and check it fully.

    The check runs against a model built from ``config`` (ResNet-101 by default) so that a
    ResNet-50 file, a truncated download or a fine-tuned variant with extra heads fails here with
    the offending names instead of loading half-initialised. ``fc.*`` (the ImageNet classifier) is
    dropped because only the conv map is used.
    """
    converted = {}
    for key, tensor in state_dict.items():
        new_key = _convert_key(key)
        if new_key is not None:
            converted[new_key] = tensor
    with torch.device("meta"):
        reference = ResNetModel(config or resnet101_config()).state_dict()
    for key in set(reference) - set(converted):
        # absent from torchvision's older files; what BatchNorm itself fills in when loading them
        if key.endswith("num_batches_tracked"):
            converted[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(reference) - set(converted))
    unexpected = sorted(set(converted) - set(reference))
    wrong_shape = [
        f"{key}: expected {tuple(reference[key].shape)}, got {tuple(converted[key].shape)}"
        for key in sorted(set(reference) & set(converted))
        if tuple(reference[key].shape) != tuple(converted[key].shape)
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            "the state dict is not a torchvision ResNet of the expected architecture "
            f"(depths {list((config or resnet101_config()).depths)}): "
            f"{len(missing)} missing keys {_preview(missing)}, "
            f"{len(unexpected)} unexpected keys {_preview(unexpected)}, "
            f"{len(wrong_shape)} shape mismatches {_preview(wrong_shape)}"
        )
    return converted


def _preview(items: list[str], limit: int = 8) -> str:
    """A bounded listing: a wrong architecture can mismatch hundreds of keys."""
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def load_torchvision_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision checkpoint without ever executing pickled code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if path.suffix in TORCH_CHECKPOINT_SUFFIXES:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"could not read {path} as a tensor-only torch checkpoint (weights_only=True): {error}"
            ) from error
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise ValueError(f"{path} does not hold a flat state dict of tensors (got {type(loaded).__name__})")
        return loaded
    raise ValueError(
        f"unsupported weights file {path}: expected .safetensors or one of {TORCH_CHECKPOINT_SUFFIXES}"
    )


_ARCHITECTURE_FIELDS = ("embedding_size", "hidden_sizes", "depths", "layer_type", "downsample_in_bottleneck")
_STATE_DICT_FILES = ("model.safetensors", "pytorch_model.bin")  # a timm / torchvision-layout checkpoint
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w][\w.-]*$")  # ORG/NAME, the one pattern every module uses


def is_hub_id(name: str) -> bool:
    """Whether `name` can only mean a Hub repo: ORG/NAME, and no such local path exists."""
    return bool(HUB_ID.match(name)) and not Path(name).exists()


def backbone_name(weights: str | os.PathLike | ResNetModel) -> str | None:
    """How configs and feature files name a backbone: the Hub id as given, else the file or folder
    name (a local path says nothing on another machine and may reveal the user's folders). A
    built ``ResNetModel`` is named by what it was loaded from (``name_or_path``); None when it has
    no such name (built in Python, or converted from a state dict): nothing is recorded then."""
    if isinstance(weights, ResNetModel):
        weights = weights.name_or_path
        if not weights:
            return None
    text = str(weights)
    return text if text == RANDOM_BACKBONE or is_hub_id(text) else Path(text).name


def describe_backbone(weights: str | os.PathLike | ResNetModel) -> str:
    """The backbone as messages and logs name it: the path or id as the user gave it (the user's
    own machine may see its folders), or the ResNetModel given in Python."""
    if not isinstance(weights, ResNetModel):
        return str(weights)
    name = backbone_name(weights)
    return f"the ResNetModel given in Python ({name})" if name else "the ResNetModel given in Python"


def _offline_error(name: str, error: Exception) -> UserError:
    return UserError(
        f"the backbone {name!r} is not in the local Hugging Face cache and cannot be downloaded ({error})",
        f"download it once where there is network access (`hf download {name}`, it lands in the same cache), "
        "or pass a local torchvision ResNet-101 file (.safetensors / .pth, e.g. resnet101-63fe2227.pth "
        "from download.pytorch.org/models/) or checkpoint folder",
    )


def _hub_file(repo_id: str, filename: str) -> Path | None:
    """One file of a Hub model repo through the Hub cache; None when the repo does not hold it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename))
    except RemoteEntryNotFoundError:
        return None
    except RepositoryNotFoundError as error:
        raise UserError(f"the backbone {repo_id!r} is no model repo on the Hub ({error})",
                        "check the id, e.g. timm/resnet101.tv_in1k (torchvision's ImageNet weights)") from error
    except OSError as error:  # offline without a cached copy, or the Hub unreachable
        raise _offline_error(repo_id, error) from error


def _pretrained(name_or_path: str | Path) -> ResNetModel:
    """transformers' loader, with the same advice as a missing Hub file when it cannot fetch."""
    try:
        return ResNetModel.from_pretrained(name_or_path)
    except OSError as error:
        raise _offline_error(str(name_or_path), error) from error


def _from_checkpoint(name: str, config_file: Path | None, weights_file: Callable[[str], Path | None],
                     architecture: ResNetConfig | None) -> ResNetModel:
    """A checkpoint folder or Hub repo: transformers' own ResNet layout (config.json with
    model_type "resnet", e.g. microsoft/resnet-101) loads with from_pretrained; any other (timm's
    resnet101.*: config.json with "architecture", torchvision key names) as a state dict file."""
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file is not None else {}
    if config.get("model_type") == "resnet":
        return _pretrained(name)
    for filename in _STATE_DICT_FILES:
        path = weights_file(filename)
        if path is not None:
            return _from_state_dict_file(path, name, architecture)
    raise UserError(f"{name} holds neither a transformers ResNet (config.json with model_type 'resnet') nor a "
                    f"torchvision-layout state dict ({' / '.join(_STATE_DICT_FILES)})",
                    "pass a ResNet-101 checkpoint, e.g. timm/resnet101.tv_in1k or a resnet101-*.pth file")


def _from_state_dict_file(path: Path, name: str, architecture: ResNetConfig | None = None) -> ResNetModel:
    try:
        state_dict = convert_torchvision_resnet_state_dict(load_torchvision_state_dict(path), architecture)
    except ValueError as error:
        raise UserError(f"the backbone {name} does not hold ResNet-101 weights in torchvision's layout: {error}",
                        "pass torchvision's ImageNet ResNet-101 (resnet101-63fe2227.pth, or its Hub copy "
                        "timm/resnet101.tv_in1k)") from error
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    with torch.device("meta"):
        model = ResNetModel(architecture or resnet101_config())
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def _load_named(weights: str, architecture: ResNetConfig | None) -> ResNetModel:
    """A weights file, a checkpoint folder or a Hub id (see :func:`build_resnet101`)."""
    path = Path(weights)
    if path.is_file():
        return _from_state_dict_file(path, weights, architecture)
    if path.suffix in (".safetensors", *TORCH_CHECKPOINT_SUFFIXES):
        raise UserError(f"backbone weights file not found: {weights}", "check the path")
    if path.is_dir():
        config_file = path / "config.json"
        return _from_checkpoint(weights, config_file if config_file.is_file() else None,
                                lambda name: path / name if (path / name).is_file() else None, architecture)
    if not is_hub_id(weights):
        raise UserError(f"the backbone {weights!r} is neither a file, a folder nor a Hub id",
                        "pass a torchvision ResNet-101 file, a checkpoint folder or a Hub id such as "
                        "timm/resnet101.tv_in1k")
    return _from_checkpoint(weights, _hub_file(weights, "config.json"), lambda name: _hub_file(weights, name),
                            architecture)


def _check_architecture(model: ResNetModel, name: str, expected: ResNetConfig) -> None:
    """A checkpoint of another ResNet (a ResNet-50, another width) is refused by name."""
    wrong = {f: getattr(model.config, f, None) for f in _ARCHITECTURE_FIELDS
             if getattr(model.config, f, None) != getattr(expected, f)}
    if wrong:
        raise UserError(f"the backbone {name} is not the expected ResNet(-101): {wrong} (expected "
                        f"{ {f: getattr(expected, f) for f in wrong} })",
                        "pass ResNet-101 weights, e.g. timm/resnet101.tv_in1k or resnet101-63fe2227.pth")


def random_resnet101() -> ResNetModel:
    """ResNet-101 with seeded random weights (the same on every call), for tests and benchmarks."""
    logger.warning("using a RANDOM ResNet-101 (--image_backbone random): its features are for tests only")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_BACKBONE_SEED)
        return ResNetModel(resnet101_config()).eval()


def build_resnet101(weights: str | os.PathLike, *, architecture: ResNetConfig | None = None) -> ResNetModel:
    """ResNet-101 in eval mode from a weights file, a checkpoint folder, a Hub id, or ``"random"``.

    A Hub id (``timm/resnet101.tv_in1k``: torchvision's weights in timm's layout, which is
    torchvision's; ``microsoft/resnet-101``: transformers' layout) is downloaded through the Hub
    cache like any model, and offline without a cached copy the error says what to download.
    ``architecture`` is the network the weights must be (refused with the backbone's name
    otherwise): None reads torchvision-layout files as ResNet-101 and takes a transformers
    checkpoint's own config; the benchmark extraction demands ResNet-101 (tests pass small nets).
    """
    if weights is None:
        raise ValueError("no backbone weights given: pass a torchvision ResNet-101 file (.pth / .safetensors), a "
                         "checkpoint folder or a Hub id such as timm/resnet101.tv_in1k, or "
                         f"{RANDOM_BACKBONE!r} for random weights (tests only)")
    if str(weights) == RANDOM_BACKBONE:
        return random_resnet101()
    model = _load_named(str(weights), architecture)
    if architecture is not None:
        _check_architecture(model, str(weights), architecture)
    return model.eval()


def image_processor(crop_size: int = DEFAULT_CROP_SIZE, resize_size: int | None = None) -> SCEGGImageProcessor:
    """The processor of region features cut at `crop_size` (short side resized to `resize_size`,
    by default the crop size first): what extraction preprocesses with and a model saves."""
    resize_size = resize_size or crop_size
    if crop_size < 1 or resize_size < crop_size:
        raise ValueError(f"need 1 <= crop_size <= resize_size, got crop_size={crop_size}, resize_size={resize_size}")
    return SCEGGImageProcessor(size={"shortest_edge": resize_size}, crop_size={"height": crop_size, "width": crop_size})


class ImagePreprocessor:
    """PIL images -> (n, 3, crop, crop) float32 pixels, exactly as torchvision's pipeline.

    The work is done by the model's own :class:`~modeling_scegg.image_processing_scegg.SCEGGImageProcessor`
    (saved with every trained model), so extracted training features and predictions from pictures
    see the same pixels. Holds no model, so DataLoader workers can pickle it.
    """

    def __init__(self, crop_size: int = DEFAULT_CROP_SIZE, resize_size: int | None = None) -> None:
        self.crop_size = crop_size
        self.processor = image_processor(crop_size, resize_size)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.processor(list(images), return_tensors="pt")["pixel_values"].float()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every weight and buffer, so cached features can be tied to the exact backbone."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def backbone_id(model: torch.nn.Module) -> str:
    """How a model records the backbone its region features came from: ``"sha256:<fingerprint>"``."""
    return f"sha256:{model_fingerprint(model)}"


def default_device() -> torch.device:
    """The GPU when there is one: at 448 px a ResNet-101 runs under 1 image/s on 2 CPU cores."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class RegionFeatures:
    """``regions``: (n, R, D) float32, regions row-major over the H x W map; ``global_``: (n, D)."""

    regions: np.ndarray
    global_: np.ndarray


class RegionFeatureExtractor:
    """Images -> (n, R, D) region features and their mean-pooled (n, D) global feature.

    Runs under ``torch.inference_mode``; ``autocast`` ("fp16" / "bf16") speeds up GPU extraction
    at the cost of precision, and the outputs are always returned as float32.
    """

    def __init__(
        self,
        model: ResNetModel,
        *,
        crop_size: int = DEFAULT_CROP_SIZE,
        resize_size: int | None = None,
        device: str | torch.device | None = None,
        autocast: str | None = None,
    ) -> None:
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be None or one of {sorted(AUTOCAST_DTYPES)}, got {autocast!r}")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.preprocess = ImagePreprocessor(crop_size, resize_size)
        self.autocast_dtype = AUTOCAST_DTYPES.get(autocast) if autocast else None

    @torch.inference_mode()
    def _last_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n, D, H, W) float32 last conv map of already preprocessed pixels, on the device."""
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with autocast:
            feature_map = self.model(pixel_values.to(self.device, non_blocking=True)).last_hidden_state
        return feature_map.float()

    def feature_maps(self, pixel_values: torch.Tensor) -> np.ndarray:
        """(n, D, H, W) float32 maps, as the region-feature HDF5 of the common preprocessing stores them."""
        return self._last_map(pixel_values).cpu().numpy()

    @torch.inference_mode()
    def extract_pixel_values(self, pixel_values: torch.Tensor) -> RegionFeatures:
        """Run the backbone on already preprocessed pixels (e.g. from DataLoader workers)."""
        regions = self._last_map(pixel_values).flatten(2).transpose(1, 2).contiguous()
        pooled = regions.mean(dim=1)
        return RegionFeatures(regions=regions.cpu().numpy(), global_=pooled.cpu().numpy())

    def __call__(self, images: Sequence[Image.Image]) -> RegionFeatures:
        return self.extract_pixel_values(self.preprocess(images))

"""One way to write a model folder, used by ``save_pretrained``, ``push_to_hub``, ``scegg push``,
training's final save, ``scegg attach-backbone`` and ``scegg add-classes``.

A complete folder holds ``config.json`` (sizes, classes, ``backbone_config``, ``auto_map`` for
AutoConfig / AutoModel / AutoModelForImageClassification, ``custom_pipelines``),
``model.safetensors`` (SC-EGG and, once known, the ResNet region backbone under ``backbone.``),
``preprocessor_config.json`` (``SCEGGImageProcessor``), the remote-code files, ``results.json``
(the training run's record, carried forward with the changes made since) and ``README.md``, the
model card. ``pipeline("image-classification" | "zero-shot-image-classification",
model=FOLDER_OR_REPO, trust_remote_code=True)``, ``AutoImageProcessor`` and ``AutoModel*`` then
work without this package.

The model's remote code is written as ``modeling_sc_egg.py``, not under the package's module
name: a Python session started inside the folder has the folder first on ``sys.path``, and a
``modeling_scegg.py`` there would shadow the installed package.

A model trained on precomputed region features has no backbone yet: :func:`attach_backbone`
embeds the one its features came from, refusing other weights when the features' backbone was
recorded (``config.feature_backbone``).
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageClassification, ResNetModel
from transformers.dynamic_module_utils import custom_object_save

from .atomic import atomic_write_text
from .data.backbone import backbone_id, backbone_name, build_resnet101, describe_backbone
from .errors import UserError
from .image_processing_scegg import SCEGGImageProcessor
from .modeling_scegg import SCEGGForImageClassification, SCEGGModel
from .pipeline_scegg import SCEGGImageClassificationPipeline, SCEGGZeroShotImageClassificationPipeline

PACKAGE_DIR = Path(__file__).resolve().parent
# the file name of the model's remote code inside a model folder (see the module docstring)
REMOTE_MODEL_MODULE = "modeling_sc_egg"
PACKAGE_MODEL_MODULE = "modeling_scegg"
RESULTS_FILE = "results.json"


# The tasks an SC-EGG folder runs and their pipeline classes. They are not registered in
# transformers' global PIPELINE_REGISTRY: that would replace its image-classification and zero-shot
# pipelines for every other model in the process; the folder's config names them instead.
PIPELINE_CLASSES = {"image-classification": SCEGGImageClassificationPipeline,
                    "zero-shot-image-classification": SCEGGZeroShotImageClassificationPipeline}


def custom_pipelines() -> dict[str, dict[str, Any]]:
    """``config.custom_pipelines``, as ``Pipeline.save_pretrained`` writes it for a registered
    pipeline: per task the remote-code class, the Auto class of its models and the input type."""
    return {task: {"impl": f"{impl.__module__.split('.')[-1]}.{impl.__name__}",
                   "pt": [AutoModelForImageClassification.__name__], "type": "image"}
            for task, impl in PIPELINE_CLASSES.items()}


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
    name = describe_backbone(weights)
    fingerprint = backbone_id(resnet)
    recorded = model.config.feature_backbone
    if recorded is not None and recorded != fingerprint:
        origin = f" ({model.config.feature_backbone_name})" if getattr(model.config, "feature_backbone_name", None) else ""
        raise UserError(
            f"the model was trained on region features of the backbone {recorded}{origin}, but {name} is {fingerprint}: "
            f"its features would not be the ones the model learnt",
            f"attach the backbone the features came from{origin or ' (the one given to scegg extract)'}")
    backbone_config = copy.deepcopy(resnet.config)
    backbone_config.out_features = [backbone_config.stage_names[-1]]
    config = copy.deepcopy(model.config)
    config.backbone_config, config.feature_backbone = backbone_config, fingerprint
    if config.feature_backbone_name is None:
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
    *,
    results: dict[str, Any] | None = None,
    repo_id: str | None = None,
    **save_kwargs: Any,
) -> Path:
    """Write the complete folder (see the module docstring), each file atomically, and return it.

    `model` is saved as SCEGGForImageClassification (with its backbone, when it has one).
    `results` is a training run's record (results.json); without it, the record and the card of
    the folder or cached repo the model was loaded from (``model.name_or_path``) are carried
    forward with what changed since (backbone attached, classes added). `image_processor`
    defaults to that parent's, else the standard 448 crop. `repo_id` names the repo in the card's
    snippets (default: a placeholder that ``push_model`` fills in). `save_kwargs` are those of
    ``PreTrainedModel.save_pretrained`` (``is_main_process``, ``max_shard_size``,
    ``push_to_hub`` with ``repo_id`` / ``token`` / ``private`` ...)."""
    from . import register_auto_classes
    from .hub import write_model_card

    push = {key: save_kwargs.pop(key) for key in ("token", "private", "commit_message") if key in save_kwargs}
    push_to_hub = save_kwargs.pop("push_to_hub", False)
    if push_to_hub and not repo_id:
        raise UserError("save_pretrained(..., push_to_hub=True) needs the repo to push to",
                        "pass repo_id='ORG/NAME', or call model.push_to_hub('ORG/NAME')")
    if not save_kwargs.pop("is_main_process", True):
        return Path(folder)
    register_auto_classes()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_model = model if isinstance(model, SCEGGForImageClassification) else as_image_model(model)
    parent = model.name_or_path
    processor = image_processor or _parent_image_processor(parent) or SCEGGImageProcessor()
    record = dict(results) if results is not None else carried_record(parent, image_model.config)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".save-") as scratch:
        _write_weights_and_code(image_model, Path(scratch), save_kwargs)
        processor.save_pretrained(scratch)
        if record:
            write_results_file(scratch, record)
        write_model_card(scratch, repo_id=repo_id)
        for written in sorted(Path(scratch).iterdir()):
            os.replace(written, folder / written.name)
    # what an earlier save left that would now contradict the folder: the shadowing module name, another run's record
    stale = [f"{PACKAGE_MODEL_MODULE}.py"] + ([] if record else [RESULTS_FILE])
    for name in stale:
        (folder / name).unlink(missing_ok=True)
    if push_to_hub:
        _push(folder, repo_id, **push)
    return folder


def write_results_file(folder: str | os.PathLike, results: dict[str, Any]) -> Path:
    """`folder`/results.json, atomically: a training run's record, which the card and users read."""
    return atomic_write_text(Path(folder) / RESULTS_FILE, json.dumps(results, indent=2, default=str))


def _write_weights_and_code(model: SCEGGForImageClassification, folder: Path, save_kwargs: dict) -> None:
    """Weights, config (auto_map, custom_pipelines) and every remote-code file the folder runs."""
    model.config.custom_pipelines = custom_pipelines()
    model.save_weights_and_code(folder, **save_kwargs)
    custom_object_save(SCEGGZeroShotImageClassificationPipeline, folder)  # pipeline_scegg.py and what it imports
    source = folder / f"{PACKAGE_MODEL_MODULE}.py"
    if not source.is_file():
        return
    os.replace(source, folder / f"{REMOTE_MODEL_MODULE}.py")  # no other remote-code file imports it by name
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    prefix = f"{PACKAGE_MODEL_MODULE}."
    config["auto_map"] = {auto: f"{REMOTE_MODEL_MODULE}.{name[len(prefix):]}" if name.startswith(prefix) else name
                          for auto, name in config.get("auto_map", {}).items()}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def parent_file(name_or_path: str | os.PathLike | None, filename: str) -> Path | None:
    """`filename` of the folder, or of the cached Hub repo, a model was loaded from (never a
    download: saving works offline)."""
    from huggingface_hub import try_to_load_from_cache

    from .hub import is_hub_id

    if not name_or_path:
        return None
    path = Path(name_or_path)
    if path.is_dir():
        return path / filename if (path / filename).is_file() else None
    if not is_hub_id(str(name_or_path)):
        return None
    cached = try_to_load_from_cache(str(name_or_path), filename)
    return Path(cached) if isinstance(cached, str) else None


def _read_json(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path is not None else None


def _parent_image_processor(name_or_path: str | None) -> SCEGGImageProcessor | None:
    path = parent_file(name_or_path, "preprocessor_config.json")
    return SCEGGImageProcessor.from_pretrained(path.parent) if path is not None else None


def carried_record(name_or_path: str | None, config) -> dict[str, Any] | None:
    """The parent's results.json with the changes made since appended under ``"changes"``: its
    metrics stay those its training run measured, and the card says what they no longer cover."""
    parent_results = _read_json(parent_file(name_or_path, RESULTS_FILE)) or {}
    parent_config = _read_json(parent_file(name_or_path, "config.json"))
    changes = changes_since(parent_config, config) if parent_config is not None else []
    if not parent_results and not changes:
        return None
    return {**parent_results, "changes": [*parent_results.get("changes", []), *changes]}


def changes_since(parent_config: dict[str, Any], config) -> list[dict[str, Any]]:
    """What a derived model changed against its parent's config.json: a backbone attached, classes
    added (by name; no run measured their accuracy)."""
    from .hub import backbone_hub_id

    changes = []
    if not parent_config.get("backbone_config") and getattr(config, "backbone_config", None) is not None:
        changes.append({"change": "backbone attached", "feature_backbone": config.feature_backbone,
                        "base_model": backbone_hub_id(config.to_dict()),
                        # the training features recorded their backbone, and attach_backbone enforced it
                        "same_as_training_features": parent_config.get("feature_backbone") == config.feature_backbone})
    known = set((parent_config.get("id2label") or {}).values())
    added = [name for _, name in sorted(config.id2label.items()) if name not in known]
    if known and added:
        changes.append({"change": "classes added", "classes": added, "accuracy": "unmeasured",
                        "note": "unseen classes synthesised from their attributes; the final classifiers were refit"})
    return changes


def push_model_to_hub(model: SCEGGModel, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                      token: str | bool | None = None, max_shard_size: int | str | None = None, **unused: Any) -> str:
    """``model.push_to_hub(repo_id)``: the complete folder, its card written for `repo_id`, pushed
    as ``save_pretrained(..., push_to_hub=True)`` pushes it; returns the commit URL."""
    if unused:
        raise TypeError(f"push_to_hub of an SC-EGG model does not take {sorted(unused)}")
    with tempfile.TemporaryDirectory(prefix="scegg-push-") as scratch:
        save_model(model, scratch, repo_id=repo_id, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
        return _push(Path(scratch), repo_id, token=token, private=private, commit_message=commit_message)


def _push(folder: Path, repo_id: str, *, token: str | bool | None = None, private: bool | None = None,
          commit_message: str | None = None) -> str:
    """The one way a saved folder reaches the Hub from transformers' entry points (``push_to_hub``,
    ``save_pretrained(push_to_hub=True)``): their arguments as ``scegg push`` takes them (token
    True: the stored login), then its file list and card; returns the commit URL."""
    from .hub import push_model

    return push_model(folder, repo_id, token=token if isinstance(token, str) else None, private=bool(private),
                      commit_message=commit_message or "Upload SC-EGG model")

__all__ = ["PIPELINE_CLASSES", "as_image_model", "attach_backbone", "custom_pipelines", "push_model_to_hub", "save_model"]

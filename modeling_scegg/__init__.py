"""SC-EGG zero-shot learning as a transformers model.

The public classes (``SCEGGConfig``, ``SCEGGModel`` (region features in),
``SCEGGForImageClassification`` (pictures or region features in), ``SCEGGImageProcessor``) load
on first use, not at ``import modeling_scegg``: torch and transformers take seconds to import,
and ``scegg --help`` or ``import modeling_scegg.cli`` must not pay for them. The first of them
that is used registers all four with the Auto classes and marks them for
``register_for_auto_class``, so that ``save_pretrained`` writes a folder that loads with
``AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True)`` (or
``AutoModel`` / ``AutoImageProcessor`` / ``pipeline``) without this package installed.
:func:`register_auto_classes` does the same explicitly, and so does importing
``modeling_scegg.modeling_scegg`` itself.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the submodule that defines it
_LAZY = {
    "SCEGGConfig": "configuration_scegg",
    "SCEGGImageProcessor": "image_processing_scegg",
    "SCEGGModel": "modeling_scegg",
    "SCEGGForImageClassification": "modeling_scegg",
    "SCEGGOutput": "modeling_scegg",
}
_registered = False

if TYPE_CHECKING:
    from .configuration_scegg import SCEGGConfig
    from .image_processing_scegg import SCEGGImageProcessor
    from .modeling_scegg import SCEGGForImageClassification, SCEGGModel, SCEGGOutput


def register_auto_classes() -> None:
    """Register the classes with transformers' Auto classes and for remote code (idempotent), and
    hand the model classes the package's folder writer (image processor, pipelines, model card)."""
    global _registered
    if _registered:
        return
    _registered = True  # first: importing modeling_scegg below registers through here too
    try:
        _register()
    except BaseException:
        _registered = False
        raise


def _register() -> None:
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    from . import export
    from .configuration_scegg import SCEGGConfig
    from .image_processing_scegg import SCEGGImageProcessor
    from .modeling_scegg import SCEGGForImageClassification, SCEGGModel, SCEGGPreTrainedModel

    AutoConfig.register(SCEGGConfig.model_type, SCEGGConfig, exist_ok=True)
    AutoModel.register(SCEGGConfig, SCEGGModel, exist_ok=True)
    AutoModelForImageClassification.register(SCEGGConfig, SCEGGForImageClassification, exist_ok=True)
    AutoImageProcessor.register(SCEGGConfig, image_processor_classes={"pil": SCEGGImageProcessor}, exist_ok=True)
    SCEGGConfig.register_for_auto_class()
    SCEGGModel.register_for_auto_class("AutoModel")
    SCEGGForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    SCEGGImageProcessor.register_for_auto_class()
    SCEGGPreTrainedModel.package_export = export


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        register_auto_classes()
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SCEGGConfig", "SCEGGForImageClassification", "SCEGGImageProcessor", "SCEGGModel", "SCEGGOutput",
           "__version__", "register_auto_classes"]

"""SC-EGG zero-shot learning as a transformers model.

Importing the package registers ``SCEGGConfig``, ``SCEGGModel`` (region features in),
``SCEGGForImageClassification`` (pictures or region features in) and ``SCEGGImageProcessor``
with the Auto classes, and marks them for ``register_for_auto_class`` so that
``save_pretrained`` copies the remote-code files next to the weights: a pushed checkpoint then
loads with ``AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True)`` (or
``AutoModel`` / ``AutoImageProcessor``) without this package installed.
"""
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from .configuration_scegg import SCEGGConfig
from .image_processing_scegg import SCEGGImageProcessor
from .modeling_scegg import SCEGGForImageClassification, SCEGGModel, SCEGGOutput

AutoConfig.register(SCEGGConfig.model_type, SCEGGConfig, exist_ok=True)
AutoModel.register(SCEGGConfig, SCEGGModel, exist_ok=True)
AutoModelForImageClassification.register(SCEGGConfig, SCEGGForImageClassification, exist_ok=True)
AutoImageProcessor.register(SCEGGConfig, image_processor_classes={"pil": SCEGGImageProcessor}, exist_ok=True)
SCEGGConfig.register_for_auto_class()
SCEGGModel.register_for_auto_class("AutoModel")
SCEGGForImageClassification.register_for_auto_class("AutoModelForImageClassification")
SCEGGImageProcessor.register_for_auto_class()

__all__ = ["SCEGGConfig", "SCEGGForImageClassification", "SCEGGImageProcessor", "SCEGGModel", "SCEGGOutput"]

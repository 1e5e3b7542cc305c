"""SC-EGG zero-shot learning as a transformers model.

Importing the package registers ``SCEGGConfig`` / ``SCEGGModel`` with the Auto classes, and marks
them for ``register_for_auto_class`` so that ``save_pretrained`` copies the two modeling files
next to the weights: a pushed checkpoint then loads with
``AutoModel.from_pretrained(repo, trust_remote_code=True)`` without this package installed.
"""
from transformers import AutoConfig, AutoModel

from .configuration_scegg import SCEGGConfig
from .modeling_scegg import SCEGGModel, SCEGGOutput

AutoConfig.register(SCEGGConfig.model_type, SCEGGConfig, exist_ok=True)
AutoModel.register(SCEGGConfig, SCEGGModel, exist_ok=True)
SCEGGConfig.register_for_auto_class()
SCEGGModel.register_for_auto_class("AutoModel")

__all__ = ["SCEGGConfig", "SCEGGModel", "SCEGGOutput"]

"""The `image-classification` pipeline of SC-EGG checkpoints, with the zero-shot switch.

`pipeline("image-classification", model=REPO, trust_remote_code=True)` finds this class through
`custom_pipelines` in the checkpoint's config.json. It is transformers' image-classification
pipeline (the checkpoint's image processor, batching) with three differences:

* pictures (paths, URLs, base64 strings, PIL images) are read by the image processor's
  ``load_picture``, as ``scegg predict`` and training read them: the same formats, sizes, EXIF
  orientation and 16-bit scaling, and the same ``UnusableImage`` refusals;

* `czsl=True` (conventional zero-shot) ranks only the classes unseen in training, with the model's
  CZSL head; the default (generalised zero-shot, GZSL) ranks every class with the GZSL head;
* scores are a softmax over exactly the classes ranked, and `top_k` is capped at their number.

This file depends only on transformers, torch, numpy and the image processor's file, so it travels to
the Hub as remote code.
"""
from __future__ import annotations

import base64
import binascii
import os
import urllib.request

import numpy as np
import torch
from transformers import ImageClassificationPipeline

from .image_processing_scegg import UnusableImage, load_picture

MAX_DOWNLOAD_BYTES = 200_000_000  # a picture fetched from a URL; larger is no photo


class SCEGGImageClassificationPipeline(ImageClassificationPipeline):
    """`pipe(images, top_k=5, czsl=False)` -> `[{"label": name, "score": p}, ...]` per image."""

    def check_model_type(self, supported_models) -> None:
        """SC-EGG models are remote code, absent from transformers' static task mapping."""
        if getattr(self.model.config, "model_type", None) != "scegg":
            super().check_model_type(supported_models)

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, timeout=None, czsl=None):
        preprocess, forward, postprocess = super()._sanitize_parameters(
            top_k=top_k, function_to_apply=function_to_apply, timeout=timeout)
        if czsl is not None:
            postprocess["czsl"] = bool(czsl)
        return preprocess, forward, postprocess

    def preprocess(self, image, timeout=None):
        """Pictures through the one reader of every path; arrays and tensors go to the processor as they are."""
        if not isinstance(image, (np.ndarray, torch.Tensor)):
            image = load_picture(_picture_source(image, timeout), getattr(self.image_processor, "decode_size", None))
        return self.image_processor(images=image, return_tensors="pt").to(self.dtype)

    def postprocess(self, model_outputs, function_to_apply=None, top_k=5, czsl=False):
        function = "softmax" if function_to_apply is None else str(getattr(function_to_apply, "value", function_to_apply))
        logits = model_outputs["czsl_logits" if czsl else "logits"][0]
        return rank_classes(logits, self.model.config, czsl=czsl, top_k=top_k, function=function)


def _picture_source(image, timeout: float | None):
    """What :func:`load_picture` reads: a URL's bytes, a base64 string's bytes, else `image` itself."""
    if not isinstance(image, str) or os.path.isfile(image):
        return image
    if image.startswith(("http://", "https://")):
        with urllib.request.urlopen(image, timeout=timeout) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise UnusableImage(f"{image} is larger than {MAX_DOWNLOAD_BYTES // 10**6} MB")
        return data
    try:
        return base64.b64decode(image.split(",", 1)[1] if image.startswith("data:image/") else image, validate=True)
    except (binascii.Error, ValueError) as error:
        raise UnusableImage(f"neither a picture file, a URL nor base64 data: {image[:80]!r}") from error


def rank_classes(logits: torch.Tensor, config, czsl: bool = False, top_k: int = 5, function: str = "softmax") -> list[dict]:
    """One image's `[{"label", "score"}, ...]`, best first: GZSL `logits` (C,) rank every class,
    CZSL `czsl_logits` (Cu,) the unseen ones; scores are a softmax over the classes ranked."""
    class_ids = config.unseen_class_ids if czsl else list(range(config.num_classes))
    logits = logits.float()
    if function == "softmax":
        scores = torch.softmax(logits, dim=-1)
    elif function == "sigmoid":
        scores = torch.sigmoid(logits)
    elif function == "none":
        scores = logits
    else:
        raise ValueError(f"function_to_apply must be softmax, sigmoid or none, got {function!r}")
    top = torch.topk(scores, k=min(int(top_k), len(class_ids)))
    return [{"label": config.id2label[class_ids[int(i)]], "score": float(v)} for v, i in zip(top.values, top.indices)]


__all__ = ["SCEGGImageClassificationPipeline", "rank_classes"]

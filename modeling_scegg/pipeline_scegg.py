"""The pipelines of SC-EGG checkpoints: `image-classification` (with the zero-shot switch) and
`zero-shot-image-classification` (candidate labels, as CLIP users classify).

`pipeline(TASK, model=REPO, trust_remote_code=True)` finds these classes through
`custom_pipelines` in the checkpoint's config.json. The first is transformers' image-classification
pipeline (the checkpoint's image processor, batching) with three differences:

* pictures (paths, URLs, base64 strings, PIL images) are read by the image processor's
  ``load_picture``, as ``scegg predict`` and training read them: the same formats, sizes, EXIF
  orientation and 16-bit scaling, and the same ``UnusableImage`` refusals;
* `czsl=True` (conventional zero-shot) ranks only the classes unseen in training, with the model's
  CZSL head; the default (generalised zero-shot, GZSL) ranks every class with the GZSL head;
* scores are a softmax over exactly the classes ranked, and `top_k` is capped at their number.

`SCEGGZeroShotImageClassificationPipeline` ranks a picture among `candidate_labels`, any classes the
model knows (seen, unseen or added after training), with scores summing to 1 over the candidates,
as transformers' CLIP pipeline does; it reads pictures the same way.

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


class SCEGGZeroShotImageClassificationPipeline(SCEGGImageClassificationPipeline):
    """`pipe(images, candidate_labels=[name, ...])` -> `[{"score": p, "label": name}, ...]` per
    image, best first: the GZSL scores of the named classes, a softmax over them only."""

    def __call__(self, image, candidate_labels=None, **kwargs):
        return super().__call__(image, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(self, candidate_labels=None, timeout=None):
        preprocess = {"timeout": timeout} if timeout is not None else {}
        return preprocess, {}, {"candidate_labels": candidate_labels}

    def postprocess(self, model_outputs, candidate_labels=None):
        class_ids = candidate_class_ids(self.model.config, candidate_labels)
        scores = torch.softmax(model_outputs["logits"][0].float()[class_ids], dim=-1)
        ranked = sorted(zip(scores.tolist(), class_ids), key=lambda pair: -pair[0])
        return [{"score": score, "label": self.model.config.id2label[i]} for score, i in ranked]


def candidate_class_ids(config, candidate_labels) -> list[int]:
    """The class ids of `candidate_labels` (a list of class names, or one name), refusing a name the
    model does not know with how to add it."""
    if isinstance(candidate_labels, str):
        candidate_labels = [candidate_labels]
    if not candidate_labels:
        raise ValueError("candidate_labels is required: the class names to rank the picture among, "
                         "e.g. candidate_labels=[\"blue_jay\", \"cardinal\"]")
    ids = {name: int(i) for i, name in config.id2label.items()}
    unknown = [name for name in candidate_labels if name not in ids]
    if unknown:
        raise ValueError(
            f"{unknown} {'is not a class' if len(unknown) == 1 else 'are not classes'} of this model "
            f"({len(ids)} classes, e.g. {sorted(ids)[:3]}); a class is added from its attributes with "
            f"`scegg add-classes MODEL classes.csv --output DIR` or model.add_classes(names, attributes)")
    if len(set(candidate_labels)) != len(candidate_labels):
        raise ValueError(f"candidate_labels names a class twice: {list(candidate_labels)}")
    return [ids[name] for name in candidate_labels]


__all__ = ["SCEGGImageClassificationPipeline", "SCEGGZeroShotImageClassificationPipeline", "candidate_class_ids",
           "rank_classes"]

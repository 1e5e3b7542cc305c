"""The pipelines of SC-EGG checkpoints: `image-classification` (with the zero-shot switch) and
`zero-shot-image-classification` (candidate labels, as CLIP users classify).

`pipeline(TASK, model=REPO, trust_remote_code=True)` finds these classes through
`custom_pipelines` in the checkpoint's config.json. The first is transformers' image-classification
pipeline (the checkpoint's image processor, batching) with four differences:

* pictures (paths, URLs, base64 strings, PIL images) are read by the image processor's
  ``load_picture``, as ``scegg predict`` and training read them: the same formats, sizes, EXIF
  orientation and 16-bit scaling, and the same ``UnusableImage`` refusals;
* `czsl=True` (conventional zero-shot) ranks only the classes unseen in training, with the model's
  CZSL head; the default (generalised zero-shot, GZSL) ranks every class with the GZSL head;
* scores are a softmax over exactly the classes ranked, and `top_k` is capped at their number;
* `return_attributes=K` explains each picture (:func:`attribute_evidence`): the result becomes
  `{"predictions", "attributes"}`, where "attributes" are the K attributes the model sees most
  strongly and every prediction gains the (at most) K attributes that support it and K that
  contradict it; `attention_maps=True` (the K seen attributes) or a list of attribute names adds
  "attention_maps", `{name: PIL image}` of their attention overlaid on the crop the model saw.
  Without these arguments the model computes nothing extra.

`SCEGGZeroShotImageClassificationPipeline` ranks a picture among `candidate_labels`, any classes the
model knows (seen, unseen or added after training), with scores summing to 1 over the candidates,
as transformers' CLIP pipeline does; it reads pictures the same way and explains its candidates
with the same `return_attributes` / `attention_maps`.

This file depends only on transformers, torch, numpy, PIL and the image processor's file, so it
travels to the Hub as remote code.
"""
from __future__ import annotations

import base64
import binascii
import math
import os
import urllib.request
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import ImageClassificationPipeline

from .image_processing_scegg import UnusableImage, load_picture

MAX_DOWNLOAD_BYTES = 200_000_000  # a picture fetched from a URL; larger is no photo


class SCEGGImageClassificationPipeline(ImageClassificationPipeline):
    """`pipe(images, top_k=5, czsl=False)` -> `[{"label": name, "score": p}, ...]` per image."""

    def check_model_type(self, supported_models) -> None:
        """SC-EGG models are remote code, absent from transformers' static task mapping."""
        if getattr(self.model.config, "model_type", None) != "scegg":
            super().check_model_type(supported_models)

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, timeout=None, czsl=None,
                             return_attributes=None, attention_maps=None):
        preprocess, forward, postprocess = super()._sanitize_parameters(
            top_k=top_k, function_to_apply=function_to_apply, timeout=timeout)
        if czsl is not None:
            postprocess["czsl"] = bool(czsl)
        forward_explain, postprocess_explain = evidence_parameters(return_attributes, attention_maps)
        return preprocess, {**forward, **forward_explain}, {**postprocess, **postprocess_explain}

    def preprocess(self, image, timeout=None):
        """Pictures through the one reader of every path; arrays and tensors go to the processor as they are."""
        if not isinstance(image, (np.ndarray, torch.Tensor)):
            image = load_picture(_picture_source(image, timeout), getattr(self.image_processor, "decode_size", None))
        return self.image_processor(images=image, return_tensors="pt").to(self.dtype)

    def _forward(self, model_inputs, **explain):
        if not explain:
            return super()._forward(model_inputs)
        outputs = self.model(**model_inputs, **explain)
        if explain.get("output_attentions"):  # the overlays are drawn on the crop the model saw
            outputs["pixel_values"] = model_inputs["pixel_values"]
        return outputs

    def postprocess(self, model_outputs, function_to_apply=None, top_k=5, czsl=False, return_attributes=0,
                    attention_maps=None):
        function = "softmax" if function_to_apply is None else str(getattr(function_to_apply, "value", function_to_apply))
        logits = model_outputs["czsl_logits" if czsl else "logits"][0]
        ranked = rank_classes(logits, self.model.config, czsl=czsl, top_k=top_k, function=function)
        if not return_attributes:
            return ranked
        return self._explain(model_outputs, ranked, return_attributes, attention_maps, czsl=czsl)

    def _explain(self, model_outputs, ranked: list[dict], return_attributes: int, attention_maps, czsl: bool = False,
                 class_ids: list[int] | None = None) -> dict:
        """`{"predictions", "attributes"[, "attention_maps"]}` of one picture (see :func:`attribute_evidence`)."""
        explained = attribute_evidence(model_outputs["attribute_scores"][0], self.model.config, ranked,
                                       self.model.class_attributes, top_k=return_attributes, czsl=czsl,
                                       class_ids=class_ids)
        if attention_maps:
            picture = picture_from_pixels(model_outputs["pixel_values"][0], self.image_processor)
            explained["attention_maps"] = attention_overlays(
                picture, model_outputs["attentions"][0], self.model.config,
                [a["attribute"] for a in explained["attributes"]] if attention_maps is True else attention_maps)
        return explained


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

    def _sanitize_parameters(self, candidate_labels=None, timeout=None, return_attributes=None, attention_maps=None):
        preprocess = {"timeout": timeout} if timeout is not None else {}
        forward, postprocess = evidence_parameters(return_attributes, attention_maps)
        return preprocess, forward, {"candidate_labels": candidate_labels, **postprocess}

    def postprocess(self, model_outputs, candidate_labels=None, return_attributes=0, attention_maps=None):
        class_ids = candidate_class_ids(self.model.config, candidate_labels)
        scores = torch.softmax(model_outputs["logits"][0].float()[class_ids], dim=-1)
        ranked = sorted(zip(scores.tolist(), class_ids), key=lambda pair: -pair[0])
        ranked = [{"score": score, "label": self.model.config.id2label[i]} for score, i in ranked]
        if not return_attributes:
            return ranked
        return self._explain(model_outputs, ranked, return_attributes, attention_maps, class_ids=class_ids)


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


# ----------------------------------------------------------------------------------------------
# attribute evidence: what the model saw, and why a class fits the picture or not
# ----------------------------------------------------------------------------------------------
def evidence_parameters(return_attributes, attention_maps) -> tuple[dict, dict]:
    """The (forward, postprocess) parameters of `return_attributes=K` and `attention_maps`
    (True or attribute names); both empty when neither is asked for, so nothing extra runs."""
    if attention_maps and not return_attributes:
        raise ValueError("attention_maps needs return_attributes=K (K >= 1)")
    if not return_attributes:
        return {}, {}
    if isinstance(return_attributes, bool) or int(return_attributes) < 1:
        raise ValueError(f"return_attributes must be a number of attributes K >= 1, got {return_attributes!r}")
    forward = {"output_attribute_scores": True, "output_attentions": bool(attention_maps)}
    return forward, {"return_attributes": int(return_attributes), "attention_maps": attention_maps}


def attribute_names(config) -> list[str]:
    """The A attribute names the config recorded, else `attribute_<i>`."""
    names = getattr(config, "attribute_names", None)
    return [str(n) for n in names] if names else [f"attribute_{i}" for i in range(config.num_attributes)]


def attribute_evidence(attribute_scores: torch.Tensor, config, predictions: list[dict], class_attributes: torch.Tensor,
                       top_k: int = 5, czsl: bool = False, class_ids: list[int] | None = None) -> dict:
    """One picture's evidence from its attribute scores e_l (A,) (`output_attribute_scores=True`).

    "attributes": the `top_k` attributes seen most strongly, `{"attribute", "score"}` with score e_l.
    Every prediction (`{"label", "score"}` of :func:`rank_classes`) gains "supporting" and
    "contradicting": the `top_k` attributes with the largest positive and negative contributions
    e_l[n] (a_y[n] - mean a[n]), with a_y the class's L2-normalised attribute vector (Eq. 3) and the
    mean over the classes ranked (`class_ids`: a zero-shot call's candidates). These sum to the
    class's LEN score p_l minus the mean p_l of those classes, so "supporting" means: seen and
    typical of the class, or absent and atypical of it; "contradicting": seen but atypical of the
    class, or typical of it but not seen. Each entry is `{"attribute", "seen" (e_l), "class_value"
    (a_y), "contribution"}`."""
    names = attribute_names(config)
    scores = attribute_scores.detach().float().cpu()
    classes = torch.nn.functional.normalize(class_attributes.detach().float().cpu(), dim=-1)
    ranked_ids = class_ids if class_ids is not None else config.unseen_class_ids if czsl else list(range(config.num_classes))
    mean = classes[ranked_ids].mean(0)
    label2id = {name: int(i) for i, name in config.id2label.items()}
    top = torch.topk(scores, k=min(int(top_k), len(names)))
    explained = [{**p, **_class_evidence(scores, classes[label2id[p["label"]]], mean, names, int(top_k))}
                 for p in predictions]
    return {"predictions": explained,
            "attributes": [{"attribute": names[int(i)], "score": float(v)} for v, i in zip(top.values, top.indices)]}


def _class_evidence(scores: torch.Tensor, values: torch.Tensor, mean: torch.Tensor, names: list[str],
                    top_k: int) -> dict:
    contribution = scores * (values - mean)
    order = torch.argsort(contribution, descending=True).tolist()

    def entry(n: int) -> dict:
        return {"attribute": names[n], "seen": float(scores[n]), "class_value": float(values[n]),
                "contribution": float(contribution[n])}

    return {"supporting": [entry(n) for n in order[:top_k] if contribution[n] > 0],
            "contradicting": [entry(n) for n in order[::-1][:top_k] if contribution[n] < 0]}


def picture_from_pixels(pixel_values: torch.Tensor, image_processor) -> Image.Image:
    """The (3, H, W) crop the model saw, as a picture: the processor's normalisation undone."""
    pixels = pixel_values.detach().float().cpu().numpy()
    if getattr(image_processor, "do_normalize", False):
        mean = np.asarray(image_processor.image_mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(image_processor.image_std, dtype=np.float32).reshape(-1, 1, 1)
        pixels = pixels * std + mean
    scale = 1.0 / image_processor.rescale_factor if getattr(image_processor, "do_rescale", False) else 1.0
    return Image.fromarray(np.clip(np.round(pixels.transpose(1, 2, 0) * scale), 0, 255).astype(np.uint8))


def region_grid(num_regions: int, width: int, height: int) -> tuple[int, int]:
    """(rows, columns) of the region map behind a width x height crop: R = rows x columns with the
    crop's aspect ratio (regions are the backbone's last map, read row-major)."""
    rows = max(1, round(math.sqrt(num_regions * height / width)))
    if rows * (num_regions // rows) != num_regions:
        raise ValueError(f"cannot lay out {num_regions} regions as a grid with the aspect of a {width} x {height} crop")
    return rows, num_regions // rows


def attention_overlay(picture: Image.Image, attention: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """One attribute's attention over regions (R,) on the picture: scaled to its own range,
    upsampled bilinearly, coloured blue (low) to red (high) as matplotlib's "jet" and blended in."""
    rows, columns = region_grid(attention.numel(), *picture.size)
    values = attention.detach().float().cpu().reshape(rows, columns).numpy()
    heat = upsample_map(scale_to_own_range(values), picture.size)
    jet = np.stack([np.clip(1.5 - np.abs(4 * heat - c), 0, 1) for c in (3, 2, 1)], axis=-1)
    coloured = Image.fromarray(np.round(jet * 255).astype(np.uint8))
    return Image.blend(picture.convert("RGB"), coloured, alpha)


def scale_to_own_range(values: np.ndarray) -> np.ndarray:
    """An attention map min-max scaled to [0, 1] on its own: peaks differ by orders of magnitude
    between attributes, so a shared range would leave most maps blank (constant maps become 0)."""
    span = float(values.max() - values.min())
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def upsample_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (rows, columns) region map resized bilinearly to a picture's (width, height), as in the paper's Fig. 3."""
    return np.asarray(Image.fromarray(values.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))


def attention_overlays(picture: Image.Image, attentions: torch.Tensor, config, chosen: Sequence[str]) -> dict:
    """`{attribute name: overlay}` for the chosen attributes of one picture's attention (A, R)."""
    names = attribute_names(config)
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise ValueError(f"attention_maps names attributes the model does not have: {unknown[:5]} "
                         f"(its attributes: {names[:5]}...)")
    return {name: attention_overlay(picture, attentions[names.index(name)]) for name in chosen}


__all__ = ["SCEGGImageClassificationPipeline", "SCEGGZeroShotImageClassificationPipeline", "attention_overlay",
           "attention_overlays", "attribute_evidence", "attribute_names", "candidate_class_ids", "evidence_parameters",
           "picture_from_pixels", "rank_classes", "region_grid", "scale_to_own_range", "upsample_map"]

"""The `image-classification` pipeline of SC-EGG checkpoints, with the zero-shot switch.

`pipeline("image-classification", model=REPO, trust_remote_code=True)` finds this class through
`custom_pipelines` in the checkpoint's config.json. It is transformers' image-classification
pipeline (image loading, the checkpoint's image processor, batching) with two differences:

* `czsl=True` (conventional zero-shot) ranks only the classes unseen in training, with the model's
  CZSL head; the default (generalised zero-shot, GZSL) ranks every class with the GZSL head;
* scores are a softmax over exactly the classes ranked, and `top_k` is capped at their number.

This file depends only on transformers and torch, so it travels to the Hub as remote code.
"""
from __future__ import annotations

import torch
from transformers import ImageClassificationPipeline


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

    def postprocess(self, model_outputs, function_to_apply=None, top_k=5, czsl=False):
        function = "softmax" if function_to_apply is None else str(getattr(function_to_apply, "value", function_to_apply))
        logits = model_outputs["czsl_logits" if czsl else "logits"][0]
        return rank_classes(logits, self.model.config, czsl=czsl, top_k=top_k, function=function)


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

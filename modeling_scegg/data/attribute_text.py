"""Attribute word vectors from attribute names, for datasets that ship none.

The LEN queries its attention with one vector per attribute (Eq. 1-2). Benchmarks ship GloVe
vectors of the attribute names; a dataset without them (an image folder, a Hub dataset without a
``word_vector`` column) would otherwise start every query at zero, i.e. uniform attention that
never learns. Here the names are turned into text ("has_bill_shape::curved" ->
"has bill shape curved") and embedded with a sentence encoder loaded through transformers, mean
pooled over its tokens as sentence-transformers does for all-MiniLM-L6-v2. A dataset with
neither word vectors nor attribute names is an error, never a silent zero.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Sequence

import numpy as np
import torch

from .semantics import ZSLDataset

logger = logging.getLogger(__name__)

DEFAULT_ATTRIBUTE_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_SEPARATORS = re.compile(r"(::|[_\-/:.])+")


def attribute_name_to_text(name: str) -> str:
    """'has_bill_shape::curved_(up_or_down)' -> 'has bill shape curved (up or down)'."""
    return " ".join(_SEPARATORS.sub(" ", name).split())


def _load_encoder(encoder: str):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder), AutoModel.from_pretrained(encoder).eval()


@torch.no_grad()
def embed_texts(texts: Sequence[str], encoder: str = DEFAULT_ATTRIBUTE_ENCODER, batch_size: int = 64) -> np.ndarray:
    """(n, d) float32 sentence embeddings: the encoder's last hidden states averaged over the
    real (non-padding) tokens of each text."""
    tokenizer, model = _load_encoder(encoder)
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        rows.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    return torch.cat(rows).float().numpy()


def embed_attribute_names(names: Sequence[str], encoder: str = DEFAULT_ATTRIBUTE_ENCODER) -> np.ndarray:
    """(A, d) word vectors for attribute names, one row per name, in order."""
    return embed_texts([attribute_name_to_text(name) for name in names], encoder)


def ensure_word_vectors(dataset: ZSLDataset, encoder: str) -> ZSLDataset:
    """The dataset with attribute word vectors: its own, or its attribute names embedded by
    ``encoder`` (recorded in ``semantics.attribute_encoder``). Raises when neither exists or the
    encoder cannot be loaded, saying what to pass instead."""
    semantics = dataset.semantics
    if semantics.word_vectors is not None:
        return dataset
    missing = f"dataset {dataset.name!r} has no attribute word vectors (field 'word_vectors')"
    if not semantics.attribute_names:
        raise ValueError(
            f"{missing} and no attribute names (field 'attribute_names') to embed instead. Provide the word "
            f"vectors (standard layout: DATA_DIR/w2v/<DS>_attribute.pkl, .npy or .safetensors; Hub layout: a "
            f"'word_vector' column in the 'attributes' config) or the attribute names (the attribute columns "
            f"of an image folder's class file, 'attribute_name' in the Hub layout)"
        )
    try:
        vectors = embed_attribute_names(semantics.attribute_names, encoder)
    except (OSError, ValueError) as error:
        raise OSError(
            f"{missing}, so its attribute names are embedded with the sentence encoder {encoder!r}, which could "
            f"not be loaded ({type(error).__name__}: {error}). Where there is network access run "
            f"`hf download {encoder} --local-dir ENCODER_DIR` and pass --attribute_encoder ENCODER_DIR, or "
            f"provide the dataset's word vectors"
        ) from error
    logger.info("%s: embedded %d attribute names with %s (dv = %d)", dataset.name, len(vectors), encoder, vectors.shape[1])
    semantics = dataclasses.replace(semantics, word_vectors=vectors, attribute_encoder=encoder)
    return dataclasses.replace(dataset, semantics=semantics)

"""Zero-shot data for SC-EGG: sources, the Arrow feature store and batching.

``load_zsl_dataset`` is the entry point (synthetic default, xlsa17 + region HDF5, Hub/local
dataset repos, image folders); ``RegionFeatureReader`` is the fast training path over a split.

The names load on first use: importing ``modeling_scegg.data.backbone`` (prediction does) must not
import every data source (HDF5 readers, datasets, image folders) with it.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> the submodule that defines it
_LAZY = {
    "open_converted": "converted",
    "save_zsl_dataset_to_hub_layout": "hub_layout",
    "default_cache_dir": "loader",
    "load_zsl_dataset": "loader",
    "ClassBalancedSampler": "sampling",
    "ClassSemantics": "semantics",
    "ZSLDataset": "semantics",
    "RegionFeatureReader": "store",
    "load_split": "store",
    "region_feature_features": "store",
    "write_split": "store",
    "SyntheticConfig": "synthetic",
    "generate_synthetic": "synthetic",
    "load_word_vectors": "word_vectors",
    "save_word_vectors": "word_vectors",
    "read_att_splits": "xlsa17",
    "read_res101": "xlsa17",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)

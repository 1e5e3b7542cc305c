"""Zero-shot data for SC-EGG: sources, the Arrow feature store and batching.

``load_zsl_dataset`` is the entry point (synthetic default, xlsa17 + region HDF5, Hub/local
dataset repos, image folders); ``RegionFeatureReader`` is the fast training path over a split.
"""
from .converted import open_converted
from .hub_layout import save_zsl_dataset_to_hub_layout
from .loader import default_cache_dir, load_zsl_dataset
from .sampling import ClassBalancedSampler
from .semantics import ClassSemantics, ZSLDataset
from .store import RegionFeatureReader, load_split, region_feature_features, write_split
from .synthetic import SyntheticConfig, generate_synthetic
from .word_vectors import load_word_vectors, save_word_vectors
from .xlsa17 import read_att_splits, read_res101

__all__ = [
    "ClassBalancedSampler",
    "ClassSemantics",
    "RegionFeatureReader",
    "SyntheticConfig",
    "ZSLDataset",
    "default_cache_dir",
    "generate_synthetic",
    "load_split",
    "load_word_vectors",
    "load_zsl_dataset",
    "open_converted",
    "read_att_splits",
    "read_res101",
    "region_feature_features",
    "save_word_vectors",
    "save_zsl_dataset_to_hub_layout",
    "write_split",
]

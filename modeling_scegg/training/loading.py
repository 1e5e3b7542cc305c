"""A run's inputs: the dataset (converted once, memory-mapped) and the model configuration sized
from it."""
from __future__ import annotations

from typing import Any

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from ..configuration_scegg import SCEGGConfig
from ..data import ZSLDataset, load_zsl_dataset
from ..data.images import parse_image_options
from ..data.synthetic import SyntheticConfig
from .arguments import SCEGGTrainingArguments, parse_key_values
from .common import silence_noisy_loggers


def load_data(args: SCEGGTrainingArguments) -> ZSLDataset:
    """The run's dataset; converted once (by the main process first) and memory-mapped."""
    silence_noisy_loggers()
    # The process group every later barrier relies on, set up as the run's Accelerator will find
    # it (forced onto the CPU by ACCELERATE_USE_CPU, as an Accelerator would be).
    with PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).main_process_first():
        return _load_zsl_data(args)


def _load_zsl_data(args: SCEGGTrainingArguments) -> ZSLDataset:
    extra = {}
    if args.synthetic_overrides:
        if args.dataset != "synthetic":
            raise ValueError(f"--synthetic_overrides only applies to --dataset synthetic, not {args.dataset!r}")
        fields = parse_key_values(args.synthetic_overrides, "--synthetic_overrides")
        try:
            extra["synthetic_config"] = SyntheticConfig(**fields)
        except TypeError as error:
            raise ValueError(f"--synthetic_overrides: {error}") from error
    return load_zsl_dataset(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
                            clip_negative_attributes=args.clip_negative_attributes, revision=args.dataset_revision,
                            class_attributes_file=args.class_attributes_file, image_backbone=args.image_backbone,
                            image_options=parse_image_options(args.image_options),
                            attribute_encoder=args.attribute_encoder, **extra)


def build_config(data: ZSLDataset, overrides: dict[str, Any]) -> SCEGGConfig:
    """Sizes and classes come from the data; the preset and overrides set the rest."""
    semantics = data.semantics
    fixed = dict(
        feature_dim=data.feature_dim, num_regions=data.num_regions,
        num_attributes=semantics.num_attributes, num_classes=semantics.num_classes,
        seen_class_ids=[int(c) for c in semantics.seen_class_ids],
        unseen_class_ids=[int(c) for c in semantics.unseen_class_ids],
        id2label=dict(enumerate(semantics.class_names)),
    )
    if semantics.word_vectors is not None:
        fixed["word_dim"] = int(semantics.word_vectors.shape[1])
    if semantics.attribute_names:
        fixed["attribute_names"] = [str(name) for name in semantics.attribute_names]
    if semantics.attribute_encoder is not None:
        fixed["attribute_encoder"] = semantics.attribute_encoder
    if data.feature_backbone is not None:
        fixed["feature_backbone"] = data.feature_backbone
        fixed["feature_backbone_name"] = data.feature_backbone_name
    clash = sorted(k for k in fixed if k in overrides and overrides[k] != fixed[k])
    if clash:
        raise ValueError(f"model overrides {clash} contradict the sizes read from dataset {data.name}")
    return SCEGGConfig(**{**overrides, **fixed})

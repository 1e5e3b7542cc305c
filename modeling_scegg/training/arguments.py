"""Every knob of a training run, as one dataclass that `HfArgumentParser` turns into flags.

A preset (`--config hub_configs/cub-official.json`) holds a `"model"` section (SCEGGConfig
fields) and a `"training"` section (fields of this class); flags given on the command line win
over the preset, and `--model_overrides key=value ...` changes single model fields (the ablations).
The built-in synthetic data has its own preset, used when no `--config` is given: the published
network widths (4096) and schedules would take hours on a CPU for data this small.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from transformers import HfArgumentParser

from ..data.attribute_text import DEFAULT_ATTRIBUTE_ENCODER

BUILTIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "synthetic": {
        "model": {"encoder_hidden_dim": 512, "generator_hidden_dim": 512, "critic_hidden_dim": 512,
                  "decoder_hidden_dim": 512, "regression_hidden_dim": 256},
        "training": {"stage1_iters": 1000, "stage2_iters": 2000, "stage3_epochs": 30, "stage3_lr": 1e-3,
                     "syn_num": 100, "classifier_epochs": 25, "checkpoint_every": 100},
    }
}

@dataclass
class SCEGGTrainingArguments:
    """Training run settings; defaults follow the published code (SPEC.md)."""

    dataset: str = field(default="synthetic", metadata={"help": "synthetic, CUB, SUN, AWA2, a dataset folder/Hub id or an image folder"})
    data_dir: str | None = field(default=None, metadata={"help": "root of the standard ZSL layout (xlsa17/, <DS>/, w2v/)"})
    cache_dir: str | None = field(default=None, metadata={"help": "where converted Arrow features are kept (default ~/.cache/scegg)"})
    class_attributes_file: str | None = field(default=None, metadata={"help": "for an image-folder --dataset: the classes CSV (class_name, is_unseen, attributes...)"})
    image_backbone: str | None = field(default=None, metadata={"help": "for an image folder (required there): torchvision ResNet-101 weights file, a transformers ResNet folder / Hub id, or 'random' (tests only)"})
    attribute_encoder: str = field(default=DEFAULT_ATTRIBUTE_ENCODER, metadata={"help": "sentence encoder (Hub id or folder) that embeds the attribute names of a dataset without attribute word vectors"})
    clip_negative_attributes: bool = field(default=False, metadata={"help": "clip the few negative AWA2 attribute values to 0"})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of a dataset repo"})
    config: str | None = field(default=None, metadata={"help": "a preset JSON with 'model' and 'training' sections"})
    model_overrides: list[str] = field(default_factory=list, metadata={"help": "SCEGGConfig fields as key=value (JSON values)"})
    synthetic_overrides: list[str] = field(default_factory=list, metadata={"help": "SyntheticConfig fields as key=value, for --dataset synthetic"})
    output_dir: str = field(default="outputs", metadata={"help": "model, results.json, plots and checkpoints go here"})
    seed: int = field(default=42, metadata={"help": "seed of every random stream of the run"})
    batch_size: int = field(default=64, metadata={"help": "per-process batch of every stage (class-balanced, always full)"})
    stage1_iters: int = field(default=2000, metadata={"help": "SCEN iterations (L_S1)"})
    stage1_optimizer: str = field(default="rmsprop", metadata={"help": "rmsprop (published) or adam (paper)"})
    stage1_lr: float = field(default=1e-4)
    stage2_iters: int = field(default=4000, metadata={"help": "regression-head iterations (L_SCR)"})
    stage2_lr: float = field(default=1e-4)
    stage3_epochs: int = field(default=300, metadata={"help": "EGGN epochs (one epoch = ceil(N_train / batch) generator steps per feedback loop)"})
    stage3_lr: float = field(default=1e-4, metadata={"help": "learning rate of G, D, Dec and F"})
    encoder_lr: float | None = field(default=None, metadata={"help": "learning rate of E (default: stage3_lr)"})
    feedback_lr: float | None = field(default=None, metadata={"help": "learning rate of F (default: stage3_lr)"})
    critic_iters: int = field(default=5, metadata={"help": "critic steps per generator step"})
    syn_num: int = field(default=300, metadata={"help": "synthetic features per unseen class (also the classifier batch)"})
    classifier_epochs: int = field(default=25)
    classifier_lr: float = field(default=1e-3)
    eval_batch_size: int = field(default=256)
    selection: str = field(default="fixed", metadata={"help": "fixed: last epoch of fixed schedules; validation: choose the classifier epochs on the val split (val classes as pseudo-unseen) first"})
    stage3_eval_every: int = field(default=0, metadata={"help": "with --selection validation: also choose the stage-3 epoch count, scoring the validation view every N stage-3 epochs (0: keep --stage3_epochs)"})
    published_protocol: bool = field(default=False, metadata={"help": "also report the best classifier epoch on TEST (the published, test-selected numbers; labelled so)"})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16"})
    checkpoint_every: int = field(default=200, metadata={"help": "save a resumable checkpoint every N steps of a stage"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    log_with: str | None = field(default="auto", metadata={"help": "Accelerate tracker: auto (tensorboard when installed), tensorboard, none"})
    plots: bool = field(default=True, metadata={"help": "write t-SNE, attention and curve PNGs"})
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None, metadata={"help": "ORG/NAME to push the trained model to"})
    hub_private: bool = field(default=False)

    def __post_init__(self) -> None:
        if self.selection not in ("fixed", "validation"):
            raise ValueError(f"--selection must be fixed or validation, got {self.selection!r}")
        if self.stage3_eval_every and self.selection != "validation":
            raise ValueError("--stage3_eval_every only applies with --selection validation")
        if self.stage1_optimizer not in ("rmsprop", "adam"):
            raise ValueError(f"--stage1_optimizer must be rmsprop or adam, got {self.stage1_optimizer!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("batch_size", "syn_num", "critic_iters", "checkpoint_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME")

    def preset(self) -> dict[str, Any]:
        """The `--config` preset, else the built-in one of the dataset (if any)."""
        return read_preset(self.config) if self.config else BUILTIN_PRESETS.get(self.dataset, {})

    def model_config_overrides(self) -> dict[str, Any]:
        """Model fields from the preset's 'model' section and then `--model_overrides`."""
        return {**self.preset().get("model", {}), **parse_key_values(self.model_overrides, "--model_overrides")}


def parse_key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """`key=value` strings to a dict; values are JSON where they parse (numbers, booleans, lists)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def read_preset(path: str | Path) -> dict[str, Any]:
    """Load a preset JSON, checking its sections so a typo does not silently fall back to defaults."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preset {path} does not exist (see hub_configs/ for the shipped ones)")
    try:
        preset = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"preset {path} is not valid JSON: {error}") from error
    unknown = set(preset) - {"model", "training", "description"}
    if unknown:
        raise ValueError(f"preset {path} has unknown sections {sorted(unknown)}; expected 'model' and 'training'")
    known = {f.name for f in fields(SCEGGTrainingArguments)}
    bad = set(preset.get("training", {})) - known
    if bad:
        raise ValueError(f"preset {path}: 'training' has unknown fields {sorted(bad)}")
    return preset


def parse_training_args(argv: Sequence[str] | None = None) -> SCEGGTrainingArguments:
    """Parse flags; a `--config` preset supplies defaults that explicit flags override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--dataset", default="synthetic")
    known, _ = pre.parse_known_args(argv)
    parser = HfArgumentParser(SCEGGTrainingArguments)
    preset = read_preset(known.config) if known.config else BUILTIN_PRESETS.get(known.dataset, {})
    parser.set_defaults(**preset.get("training", {}))
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args

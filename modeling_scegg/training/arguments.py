"""Every knob of a training run, as one dataclass that `HfArgumentParser` turns into flags.

A preset (`--config cub-published`, a shipped name, or `--config my.json`) holds a `"model"`
section (SCEGGConfig fields), a `"training"` section (fields of this class), a `"description"`
and, in the shipped presets, `"sources"`: where each value comes from. Flags given on the command
line win over the preset, and `--model_overrides key=value ...` changes single model fields (the
ablations). Without `--config`, a standard dataset name picks its default preset
(`DEFAULT_PRESETS`) and the built-in synthetic data its own small one: the published network
widths (4096) and schedules would take hours on a CPU for data this small.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Sequence, get_args, get_origin, get_type_hints

from transformers import HfArgumentParser

from ..data.attribute_text import DEFAULT_ATTRIBUTE_ENCODER
from ..data.images import parse_image_options
from ..presets import PRESET_FOLDERS, shipped_presets
from .precision import resolve_mixed_precision

logger = logging.getLogger(__name__)

# Where the shipped presets are: beside the installed package (wheels), or at the top of the
# source checkout (editable installs).
# The preset a standard dataset name trains with when no --config is given and no choice is made
# on the run's own validation view (--preset_choice off, or data without one): of the published
# pattern and the paper's text, the one with the higher calibrated GZSL H on the validation view
# of that dataset's synthetic layout (benchmarks/validation_choices.py; README, "Presets").
DEFAULT_PRESETS = {"CUB": "cub-published", "SUN": "sun-published", "AWA2": "awa2-published"}
# The presets a run of a standard dataset chooses among on its own validation view
# (`--preset_choice`): the published pattern and the paper's text of that dataset.
PRESET_CANDIDATES = {name: [f"{name.lower()}-published", f"{name.lower()}-paper"] for name in DEFAULT_PRESETS}
PRESET_SECTIONS = {"model", "training", "description", "sources"}

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
    """Training run settings; defaults follow the published code (README, "Paper and published code")."""

    dataset: str = field(default="synthetic", metadata={"help": (
        "synthetic, CUB, SUN, AWA2, a dataset folder/Hub id or an image folder")})
    data_dir: str | None = field(default=None, metadata={"help": "root of the standard ZSL layout (xlsa17/, <DS>/, w2v/)"})
    cache_dir: str | None = field(default=None, metadata={"help": (
        "where converted Arrow features are kept (default: scegg/ in the Hugging Face datasets cache, HF_DATASETS_CACHE or "
        "$HF_HOME/datasets)")})
    class_attributes_file: str | None = field(default=None, metadata={"help": (
        "for an image-folder --dataset: the classes CSV (class_name, is_unseen, attributes...)")})
    image_backbone: str | None = field(default=None, metadata={"help": (
        "for an image folder (required there): torchvision ResNet-101 weights file, a checkpoint folder, a Hub id "
        "(timm/resnet101.tv_in1k: torchvision's ImageNet weights; microsoft/resnet-101), or 'random' (tests only)")})
    image_options: list[str] = field(default_factory=list, metadata={"help": (
        "for an image-folder --dataset: extraction and split settings as key=value, e.g. crop_size=224 resize_size=256 "
        "test_seen_fraction=0.2 splits_file=F attribute_vectors_file=F batch_size=32 num_workers=4 device=cuda "
        "autocast=bf16 (modeling_scegg.data.images.IMAGE_OPTIONS)")})
    attribute_encoder: str = field(default=DEFAULT_ATTRIBUTE_ENCODER, metadata={"help": (
        "sentence encoder (Hub id or folder) that embeds the attribute names of a dataset without attribute word vectors")})
    clip_negative_attributes: bool = field(default=False, metadata={"help": "clip the few negative AWA2 attribute values to 0"})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of a dataset repo"})
    config: str | None = field(default=None, metadata={"help": "a preset JSON with 'model' and 'training' sections"})
    model_overrides: list[str] = field(default_factory=list, metadata={"help": "SCEGGConfig fields as key=value (JSON values)"})
    synthetic_overrides: list[str] = field(default_factory=list, metadata={"help": (
        "SyntheticConfig fields as key=value, for --dataset synthetic")})
    output_dir: str = field(default="outputs", metadata={"help": "model, results.json, plots and checkpoints go here"})
    seed: int = field(default=42, metadata={"help": "seed of every random stream of the run"})
    batch_size: int = field(default=64, metadata={"help": "per-process batch of every stage (class-balanced, always full)"})
    stage1_iters: int = field(default=2000, metadata={"help": "SCEN iterations (L_S1)"})
    stage1_optimizer: Literal["rmsprop", "adam"] = field(default="rmsprop", metadata={"help": (
        "rmsprop (published) or adam (paper, Sec. 4)")})
    stage1_lr: float = field(default=1e-4, metadata={"help": "stage-1 learning rate"})
    stage2_iters: int = field(default=4000, metadata={"help": "regression-head iterations (L_SCR)"})
    stage2_optimizer: Literal["rmsprop", "adam"] = field(default="rmsprop", metadata={"help": (
        "rmsprop (published) or adam (paper, Sec. 4)")})
    stage2_lr: float = field(default=1e-4, metadata={"help": "stage-2 learning rate"})
    stage3_epochs: int = field(default=300, metadata={"help": (
        "EGGN epochs (one epoch = ceil(N_train / batch) generator steps per feedback loop)")})
    stage3_lr: float = field(default=1e-4, metadata={"help": "learning rate of G and D (and of E, Dec, F unless set)"})
    encoder_lr: float | None = field(default=None, metadata={"help": "learning rate of E (default: stage3_lr, as published)"})
    decoder_lr: float = field(default=1e-4, metadata={"help": (
        "learning rate of the attribute decoder Dec (published dec_lr: 1e-4 on every dataset)")})
    feedback_lr: float | None = field(default=None, metadata={"help": (
        "learning rate of F (published feed_lr: CUB 1e-5, SUN and AWA2 1e-4; default: stage3_lr)")})
    stage3_pass_order: Literal["epoch", "batch"] = field(default="epoch", metadata={"help": (
        "epoch: each stage-3 epoch runs all its batches without feedback, then all with (published); batch: alternate the "
        "two at every batch")})
    critic_iters: int = field(default=5, metadata={"help": "critic steps per generator step"})
    syn_num: int = field(default=300, metadata={"help": "synthetic features per unseen class (also the classifier batch)"})
    classifier_epochs: int = field(default=25, metadata={"help": "epochs of the final GZSL and CZSL classifiers"})
    classifier_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the final classifiers"})
    eval_batch_size: int = field(default=256, metadata={"help": "batch of the feature caching pass and of evaluation"})
    selection: Literal["fixed", "validation"] = field(default="fixed", metadata={"help": (
        "fixed: last epoch of fixed schedules; validation: choose the classifier epochs on the val split (val classes as "
        "pseudo-unseen) first")})
    stage3_eval_every: int = field(default=0, metadata={"help": (
        "with --selection validation: also choose the stage-3 epoch count, scoring the validation view every N stage-3 "
        "epochs (0: keep --stage3_epochs)")})
    calibration: Literal["auto", "validation", "none"] = field(default="auto", metadata={"help": (
        "validation: calibrated stacking (Chao et al. 2016), the seen-class score offset chosen on the validation view (val "
        "classes as pseudo-unseen), never on test, in a run of its own on that view; results report calibrated and raw GZSL "
        "side by side. auto: validation where the data has train_sub / val splits, else none")})
    preset_choice: Literal["auto", "validation", "off"] = field(default="auto", metadata={"help": (
        "validation: train every --preset_candidates preset on the validation view (val classes as pseudo-unseen) and "
        "keep the one with the highest GZSL H there (calibrated with --calibration validation); the choice and every "
        "candidate's validation scores go to results.json and the card. auto: validation when no --config is given, the "
        "dataset has candidates and a validation view, else off (the preset as given)")})
    view_schedule: float = field(default=1.0, metadata={"help": (
        "share of the run's stage-1 / stage-2 iterations and stage-3 epochs that the validation view's run trains (it "
        "chooses the calibration offset and the preset; classifier epochs and syn_num stay the run's): 1.0 is the full "
        "schedule, lower is cheaper (benchmarks/README.md, \"A cheaper validation view\")")})
    view_shortens: Literal["all", "after_stage1"] = field(default="all", metadata={"help": (
        "what --view_schedule shortens: all (stage-1 and stage-2 iterations and stage-3 epochs) or after_stage1 (stage 2 "
        "and 3 only; the view's stage 1 trains the run's iterations)")})
    preset_candidates: list[str] = field(default_factory=list, metadata={"help": (
        "preset names or files --preset_choice chooses among (default: the dataset's published and paper presets, e.g. "
        "awa2-published awa2-paper)")})
    published_protocol: Literal["off", "classifier", "full"] = field(default="off", metadata={"help": (
        "also report the published, TEST-selected numbers (labelled so, never in the model card's model-index): classifier ="
        " the best classifier epoch on test after the last stage-3 epoch; full = as the published code, classifiers trained "
        "and scored on test after every stage-3 epoch, best classifier epoch of each, then the best stage-3 epoch")})
    mixed_precision: str | None = field(default=None, metadata={"help": (
        "no, fp16, bf16 or auto; default: what `accelerate config` / `accelerate launch --mixed_precision` set, else auto "
        "(bf16 where the device has native bf16 matmuls, float32 elsewhere)")})
    checkpoint_every: int = field(default=200, metadata={"help": "save a resumable checkpoint every N steps of a stage"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    log_with: str | None = field(default="auto", metadata={"help": (
        "Accelerate tracker: auto (tensorboard when installed), tensorboard, none")})
    plots: bool = field(default=True, metadata={"help": "write t-SNE, attention and curve PNGs"})
    push_to_hub: bool = field(default=False, metadata={"help": "push the trained model, card and results to --hub_model_id"})
    hub_model_id: str | None = field(default=None, metadata={"help": "ORG/NAME to push the trained model to"})
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repository as private"})

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.stage3_eval_every and self.selection != "validation":
            raise ValueError("--stage3_eval_every only applies with --selection validation")
        self.mixed_precision = resolve_mixed_precision(self.mixed_precision)
        for name in ("batch_size", "syn_num", "critic_iters", "checkpoint_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.view_schedule <= 1:
            raise ValueError(f"--view_schedule must be in (0, 1], got {self.view_schedule}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME")
        if self.image_options and self.class_attributes_file is None:
            raise ValueError("--image_options applies to an image-folder --dataset (with --class_attributes_file)")
        parse_image_options(self.image_options)  # refused here, before any work, with what each option takes

    def preset(self) -> dict[str, Any]:
        """The `--config` preset, else the built-in one of the dataset (if any)."""
        return dataset_preset(self.config, self.dataset)

    def model_config_overrides(self) -> dict[str, Any]:
        """Model fields from the preset's 'model' section and then `--model_overrides`."""
        return {**self.preset().get("model", {}), **parse_key_values(self.model_overrides, "--model_overrides")}


def _check_choices(args: SCEGGTrainingArguments) -> None:
    """Literal-typed fields accept only their choices, also when the dataclass is built in code
    (the command line parser enforces them already)."""
    for name, hint in get_type_hints(type(args)).items():
        if get_origin(hint) is Literal and getattr(args, name) not in get_args(hint):
            raise ValueError(f"--{name} must be one of {list(get_args(hint))}, got {getattr(args, name)!r}")


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


def preset_path(name_or_path: str | Path) -> Path:
    """A preset file: a path as given, or the shipped preset of that name (`cub-published`)."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix == ".json":
        return path
    for folder in PRESET_FOLDERS:
        if (folder / f"{name_or_path}.json").is_file():
            return folder / f"{name_or_path}.json"
    raise FileNotFoundError(f"no preset file or shipped preset named {name_or_path!r}; shipped: {shipped_presets()}")


def dataset_preset(config: str | None, dataset: str) -> dict[str, Any]:
    """The preset a run uses: `--config`, else the default of a standard dataset name, else the
    built-in one (synthetic data), else none (the dataclass defaults)."""
    if config:
        return read_preset(config)
    if dataset.upper() in DEFAULT_PRESETS:
        return read_preset(DEFAULT_PRESETS[dataset.upper()])
    return BUILTIN_PRESETS.get(dataset, {})


def read_preset(name_or_path: str | Path) -> dict[str, Any]:
    """Load a preset JSON, checking its sections so a typo does not silently fall back to defaults."""
    path = preset_path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"preset {path} does not exist (shipped presets: {shipped_presets()})")
    try:
        preset = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"preset {path} is not valid JSON: {error}") from error
    unknown = set(preset) - PRESET_SECTIONS
    if unknown:
        raise ValueError(f"preset {path} has unknown sections {sorted(unknown)}; expected {sorted(PRESET_SECTIONS)}")
    known = {f.name for f in fields(SCEGGTrainingArguments)}
    bad = set(preset.get("training", {})) - known
    if bad:
        raise ValueError(f"preset {path}: 'training' has unknown fields {sorted(bad)}")
    return preset


def parse_training_args(argv: Sequence[str] | None = None, prog: str = "scegg train") -> SCEGGTrainingArguments:
    """Parse flags; a `--config` preset (or the dataset's default one) supplies defaults that
    explicit flags override, and `--help` shows those, the run's real defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--dataset", default="synthetic")
    known, _ = pre.parse_known_args(argv)
    parser = HfArgumentParser(SCEGGTrainingArguments, prog=prog,
                              description="Train SC-EGG stage by stage (Accelerate); "
                                          "--dataset and --config set the defaults shown.",
                              epilog=f"shipped presets (--config NAME): {', '.join(shipped_presets())}. "
                                     "`scegg train ARGS.json` reads these flags from a JSON object.")
    default = None if known.config else DEFAULT_PRESETS.get(known.dataset.upper())
    preset = dataset_preset(known.config, known.dataset)
    parser.set_defaults(**preset.get("training", {}), **({"config": default} if default else {}))
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if known.config and args.preset_choice == "auto":  # the user named the preset: keep it
        args.preset_choice = "off"
    if default:
        logger.info("--dataset %s without --config: training with its default preset %s (%s)", known.dataset, default,
                    preset_path(default))
    elif not known.config and known.dataset not in BUILTIN_PRESETS:
        logger.warning("--dataset %s has no preset: training with the built-in defaults (pass --config to choose one; "
                       "shipped: %s)", known.dataset, ", ".join(shipped_presets()))
    return args

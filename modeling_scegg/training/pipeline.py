"""The whole SC-EGG run as `scegg train` and examples/train_stages.py run it: load the data,
choose on the validation view what must not be chosen on test data (in a run of its own), then
the real run (:mod:`.runner`) with what was chosen."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from accelerate.logging import get_logger

from ..data import ZSLDataset
from .arguments import SCEGGTrainingArguments
from .loading import load_data
from .preset_choice import choose_preset, resolve_preset_choice
from .run_lock import run_locked
from .runner import train_and_evaluate
from .selection import choice_from_view, has_validation_split, validation_view, view_arguments
from .state import RunPlan, ValidationChoice

logger = get_logger(__name__)


def run_pipeline(args: SCEGGTrainingArguments) -> dict[str, Any]:
    """Train every stage and evaluate (what `scegg train` and examples/train_stages.py run);
    returns the results written to `results.json`."""
    data = load_data(args)
    with run_locked(args.output_dir):  # from the validation view's run to the end of the real one
        args, choice = choose_on_validation(args, data)
        return train_and_evaluate(args, data, choice)[0]


def resolve_calibration(calibration: str, data: ZSLDataset) -> str:
    """`auto` calibrates wherever a validation view exists to choose the offset on (it was the
    better choice on the validation data of every benchmark layout: README, "Presets")."""
    if calibration != "auto":
        return calibration
    resolved = "validation" if has_validation_split(data) else "none"
    logger.info(f"--calibration auto: {resolved} ({data.name} {'has' if resolved == 'validation' else 'has no'} "
                f"train_sub / val splits)", main_process_only=True)
    return resolved


def choose_on_validation(args: SCEGGTrainingArguments,
                         data: ZSLDataset) -> tuple[SCEGGTrainingArguments, ValidationChoice | None]:
    """The choices that must not look at test data, made on the validation view of `data` in a
    full run of its own under `output_dir/validation`: the preset (`--preset_choice`, one view
    run per candidate under `output_dir/validation/<preset>`), the calibration offset
    (`--calibration`), and with `--selection validation` the classifier epochs (and, with
    `--stage3_eval_every`, the stage-3 epochs). Returns the arguments of the real run and what
    was chosen (None when nothing is)."""
    args = dataclasses.replace(args, calibration=resolve_calibration(args.calibration, data),
                               preset_choice=resolve_preset_choice(args, data))
    if args.preset_choice == "validation":
        args, choice, record = choose_preset(args, data, _select_on_validation)
        choice = dataclasses.replace(choice, preset_choice=record)
    elif args.selection != "validation" and args.calibration != "validation":
        return args, None
    else:
        choice = _select_on_validation(args, data)
    return dataclasses.replace(args, stage3_epochs=choice.stage3_epochs), choice


def _select_on_validation(args: SCEGGTrainingArguments, data: ZSLDataset, folder: Path | None = None) -> ValidationChoice:
    """Run everything on the validation view (in `folder`, default `output_dir/validation`) and
    read off what the real run uses (`choice_from_view`)."""
    view_args = view_arguments(args, folder or Path(args.output_dir) / "validation")
    view = validation_view(data, args.seed)
    _, view_run = train_and_evaluate(view_args, view, plan=RunPlan.for_view(view_args))
    return choice_from_view(args, view, view_run.progress.scores)

"""Honest model selection: the validation view of a dataset, in which the classes of the xlsa17
`val_loc` split (held out of `train_loc`) act as unseen classes, and what is chosen on it.

A run that chooses anything (`--calibration validation`, `--selection validation`,
`--preset_choice validation`) first trains the whole pipeline on this view, scores the
classifiers after every epoch on the view's held-out images, reads its choices off those scores
(`choice_from_view`), and then trains on the real splits with them. The test splits are never
looked at to choose.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from ..data import ZSLDataset
from .arguments import SCEGGTrainingArguments
from .classifiers import best_epochs
from .state import EpochScores, OffsetChoice, ValidationChoice

HELD_OUT_FRACTION = 0.2


def protocol_description(choice: ValidationChoice, args: SCEGGTrainingArguments) -> str:
    """What results.json and the card say about how the reported model was chosen."""
    stages = "1-3" if args.view_shortens == "all" else "2-3"
    schedule = "" if args.view_schedule == 1 else f", trained for {args.view_schedule:.0%} of the run's stage {stages} schedule"
    view = (f"the validation view (val classes as pseudo-unseen, {HELD_OUT_FRACTION:.0%} of train_sub images per class "
            f"held out as seen{schedule})")
    chosen = []
    if choice.preset_choice:
        chosen.append(f"the preset ({choice.preset_choice['chosen']}, among "
                      f"{', '.join(choice.preset_choice['candidates'])})")
    if args.selection == "validation":
        chosen.append("classifier epochs and the stage-3 epoch count" if choice.stage3_epochs_scored
                      else "classifier epochs")
    if args.calibration == "validation":
        chosen.append("the calibrated-stacking seen-score offset")
    fixed = "" if choice.stage3_epochs_scored else "; stages 1-3 run their fixed schedules"
    if args.selection != "validation":
        fixed = "; every stage runs its fixed schedule and the last epoch is reported"
    return f"validation split: {' and '.join(chosen)} selected on {view}{fixed}; nothing is selected on test data"


def view_arguments(args: SCEGGTrainingArguments, output_dir: str | Path) -> SCEGGTrainingArguments:
    """The arguments of the validation view's run, derived from the real run's: written to
    `output_dir`, no plots, no push, no test-selected protocol, and `--view_schedule` of the
    run's stage-2 iterations and stage-3 epochs (rounded up, at least 1), and of its stage-1
    iterations unless `--view_shortens after_stage1` keeps stage 1 whole. What the view
    chooses is on the real run's scale, so what it selects keeps the run's length: the classifier
    epochs (`--selection validation` picks among them) and, with `--stage3_eval_every`, the
    stage-3 epochs; syn_num and every learning rate stay, so the view's classifiers see the same
    balance of real seen and generated unseen rows as the run's."""
    def share(count: int) -> int:
        return max(1, math.ceil(args.view_schedule * count))

    return dataclasses.replace(
        args, output_dir=str(output_dir), published_protocol="off", push_to_hub=False, plots=False,
        stage1_iters=share(args.stage1_iters) if args.view_shortens == "all" else args.stage1_iters,
        stage2_iters=share(args.stage2_iters),
        stage3_epochs=args.stage3_epochs if args.stage3_eval_every else share(args.stage3_epochs))


def has_validation_split(data: ZSLDataset) -> bool:
    return "train_sub" in data.splits and "val" in data.splits and data.semantics.val_class_ids is not None


def validation_view(data: ZSLDataset, seed: int) -> ZSLDataset:
    """train = train_sub minus a held-out share of each class, test_seen = that share,
    test_unseen = val; the val classes become the unseen classes."""
    if not has_validation_split(data):
        raise ValueError(
            f"choosing on validation (--selection, --calibration or --preset_choice validation) needs "
            f"train_sub / val splits (xlsa17 train_loc / val_loc, or the "
            f"synthetic generator's num_val > 0); dataset {data.name} has splits {sorted(data.splits)}"
        )
    train_sub = data.splits["train_sub"]
    labels = np.asarray(train_sub["label"], dtype=np.int64)
    keep, held = _hold_out(labels, np.random.default_rng(seed))
    semantics = dataclasses.replace(
        data.semantics,
        seen_class_ids=np.unique(labels[keep]),
        unseen_class_ids=np.asarray(data.semantics.val_class_ids, dtype=np.int64),
        val_class_ids=None,
    )
    splits = DatasetDict(train=train_sub.select(keep), test_seen=train_sub.select(held), test_unseen=data.splits["val"])
    return ZSLDataset(name=f"{data.name} (validation view)", splits=splits, semantics=semantics)


def _hold_out(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row positions to train on and to hold out: a share of every class with at least 2 images."""
    keep, held = [], []
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        count = int(round(HELD_OUT_FRACTION * len(rows))) if len(rows) > 1 else 0
        count = min(max(count, 1 if len(rows) > 1 else 0), len(rows) - 1)
        held.append(rows[:count])
        keep.append(rows[count:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def choice_from_view(args: SCEGGTrainingArguments, view: ZSLDataset, scores: EpochScores) -> ValidationChoice:
    """What the real run uses, read off the view run's per-epoch scores: with `--selection
    validation` the classifier epochs and, with `--stage3_eval_every`, the stage-3 epoch count
    (best GZSL H); with `--calibration validation` the seen-score offset that is best for the
    chosen GZSL epoch (H is then the calibrated H)."""
    calibrated, selects = args.calibration == "validation", args.selection == "validation"
    by_stage3 = scores.by_stage3_epoch
    if by_stage3:
        stage3_epochs = max(by_stage3, key=lambda e: best_epochs(by_stage3[e], calibrated)["gzsl_h"])
        by_epoch = by_stage3[stage3_epochs]
    else:
        stage3_epochs, by_epoch = args.stage3_epochs, scores.by_classifier_epoch
    best = best_epochs(by_epoch if selects else by_epoch[-1:], calibrated)
    calibration = None
    if calibrated:
        entry = by_epoch[best["gzsl_epoch"] - 1] if selects else by_epoch[-1]
        calibration = OffsetChoice(seen_score_offset=best["seen_score_offset"],
                                   validation_gzsl_h={"calibrated": best["gzsl_h"], "uncalibrated": entry["gzsl_h"]})
    return ValidationChoice(
        stage3_epochs=int(stage3_epochs), validation_scores=best,
        validation_unseen_classes=[int(c) for c in view.semantics.unseen_class_ids],
        stage3_epochs_scored=sorted(by_stage3), calibration=calibration,
        classifier_epochs=(best["gzsl_epoch"], best["czsl_epoch"]) if selects else None)

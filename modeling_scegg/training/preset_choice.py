"""The preset a run trains with, chosen on the user's own validation view rather than guessed.

Which preset suits a dataset (the published pattern, the paper's text) depends on its features:
on synthetic features the AWA2 layout favoured `awa2-paper`, on held-out region features of real
animal pictures `awa2-published` was 19 points of H better (README, "Presets"). So a run that
has a validation view (it runs one anyway to choose the calibration offset) trains every
candidate on that view and keeps the one with the highest GZSL H there; the test splits are
never read. The winner's view run is the one the calibration offset and epochs come from, so a
choice among N candidates costs N - 1 more view runs.

`choose_preset` takes the view scoring as a function, so a cheaper view (a shorter schedule, a
subsample) plugs in without touching the choice.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable

from ..data import ZSLDataset
from .arguments import PRESET_CANDIDATES, SCEGGTrainingArguments, read_preset
from .selection import has_validation_split
from .state import ValidationChoice

logger = logging.getLogger(__name__)

# what a candidate is judged by, as results.json and the card state it
CRITERION = "GZSL H on the validation view (calibrated when --calibration validation), never test data"
# per candidate, what results.json keeps of its view scores
_RECORDED = ("gzsl_h", "gzsl_unseen", "gzsl_seen", "czsl_acc", "seen_score_offset")

ViewScorer = Callable[[SCEGGTrainingArguments, ZSLDataset, Path], ValidationChoice]


def preset_candidates(args: SCEGGTrainingArguments) -> list[str]:
    """`--preset_candidates`, else the dataset's (none for data without shipped presets)."""
    return list(args.preset_candidates) or PRESET_CANDIDATES.get(args.dataset.upper(), [])


def resolve_preset_choice(args: SCEGGTrainingArguments, data: ZSLDataset) -> str:
    """`auto` chooses where there is something to choose and a view to choose it on (a given
    `--config` already turned `auto` into `off` when the flags were parsed)."""
    if args.preset_choice != "auto":
        return args.preset_choice
    return "validation" if len(preset_candidates(args)) > 1 and has_validation_split(data) else "off"


def candidate_args(args: SCEGGTrainingArguments, preset: str) -> SCEGGTrainingArguments:
    """`args` with `preset` in place of the run's preset: every training value the run took from
    its preset (or the built-in default) becomes the candidate's; values the user set to
    something else (e.g. a shorter schedule) stay, so every candidate runs under the user's
    flags. The model section follows `config`."""
    defaults = {f.name: f.default for f in fields(SCEGGTrainingArguments) if f.default is not MISSING}
    current, candidate = args.preset().get("training", {}), read_preset(preset).get("training", {})
    changes = {key: candidate.get(key, defaults.get(key)) for key in set(current) | set(candidate)
               if getattr(args, key) == current.get(key, defaults.get(key))}
    return dataclasses.replace(args, config=preset, **changes)


def choose_preset(args: SCEGGTrainingArguments, data: ZSLDataset,
                  score_view: ViewScorer) -> tuple[SCEGGTrainingArguments, ValidationChoice, dict[str, Any]]:
    """Score every candidate with `score_view(candidate_args, data, view_folder)` (which returns
    what the pipeline chose on the view, with its `validation_scores`) and keep the best by
    validation H. Returns the winner's arguments, its view selection, and the record of the
    choice for results.json."""
    root = Path(args.output_dir) / "validation"
    scored = {}
    for preset in preset_candidates(args):
        candidate = candidate_args(args, preset)
        scored[preset] = (candidate, score_view(candidate, data, root / Path(preset).stem))
        logger.info("preset %s: validation H %.2f", preset, scored[preset][1].validation_scores["gzsl_h"])
    chosen = max(scored, key=lambda name: scored[name][1].validation_scores["gzsl_h"])
    record = {"mode": "validation", "chosen": chosen, "criterion": CRITERION, "view_schedule": args.view_schedule,
              "candidates": {name: {k: view.validation_scores[k] for k in _RECORDED if k in view.validation_scores}
                             for name, (_, view) in scored.items()}}
    logger.info("--preset_choice validation: training with %s", chosen)
    return scored[chosen][0], scored[chosen][1], record

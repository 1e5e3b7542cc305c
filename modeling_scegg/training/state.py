"""The state of one training run, as types whose names say what they hold.

A run carries: the dense features every stage after the first reads (`FeatureCache`), what was
chosen on the validation view (`ValidationChoice`), the scores it keeps per epoch
(`EpochScores`), and what every snapshot records (`Progress`: timings, per-epoch scores, final
results, loss histories). How a run scores its epochs and which classifier recipe it trains with
follows from its `RunPlan`: the validation view's run and the real run differ there, and only
there. Every type writes and reads the snapshot format (`progress.json`, `cache.safetensors`)
and the results.json keys that users read, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .arguments import SCEGGTrainingArguments

CACHED_SPLITS = ("train", "test_seen", "test_unseen")
Scores = dict[str, Any]  # one scoring of the classifiers: CZSL Acc, GZSL U / S / H, ... (results.json keys)


@dataclass
class SplitFeatures:
    """One split's dense features g (N, D) from the frozen SCEN, min-max scaled once the scaler
    is fitted, their labels (N,), and for the training split the local scores p_l (N, C) that
    stage 2 regresses."""

    features: torch.Tensor
    labels: torch.Tensor
    local_scores: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {"features": self.features, "local_scores": self.local_scores, "labels": self.labels}
        return {name: value for name, value in named.items() if value is not None}


@dataclass
class FeatureCache:
    """The dense features of every split a run reads after stage 1: later stages never read
    region features again."""

    train: SplitFeatures
    test_seen: SplitFeatures
    test_unseen: SplitFeatures

    def splits(self) -> dict[str, SplitFeatures]:
        return {name: getattr(self, name) for name in CACHED_SPLITS}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat `split/name` tensors, as `cache.safetensors` stores them."""
        return {f"{split}/{name}": value.contiguous() for split, features in self.splits().items()
                for name, value in features.tensors().items()}

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor]) -> FeatureCache:
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            split, name = key.split("/", 1)
            grouped.setdefault(split, {})[name] = value
        return cls(**{split: SplitFeatures(**grouped[split]) for split in CACHED_SPLITS})


@dataclass
class OffsetChoice:
    """The calibrated-stacking seen-score offset chosen on the validation view (subtracted from
    the seen classes' GZSL scores, in score units) and the view's H with and without it."""

    seen_score_offset: float
    validation_gzsl_h: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"seen_score_offset": self.seen_score_offset, "validation_gzsl_h": self.validation_gzsl_h}


@dataclass
class ValidationChoice:
    """What the real run takes from the validation view's run: the stage-3 epoch count, the
    classifier epochs (with `--selection validation`), the seen-score offset (with
    `--calibration validation`) and the preset (with `--preset_choice validation`), with the
    view's scores they were chosen by. Written to results.json as "selection"."""

    stage3_epochs: int
    validation_scores: Scores
    validation_unseen_classes: list[int]
    stage3_epochs_scored: list[int]
    classifier_epochs: tuple[int, int] | None = None
    calibration: OffsetChoice | None = None
    preset_choice: dict[str, Any] | None = None

    @property
    def seen_score_offset(self) -> float:
        return self.calibration.seen_score_offset if self.calibration else 0.0

    def to_json(self) -> dict[str, Any]:
        """The results.json "selection" entry (its keys are what users read)."""
        out: dict[str, Any] = {"stage3_epochs": self.stage3_epochs, "validation_scores": self.validation_scores,
                               "validation_unseen_classes": self.validation_unseen_classes,
                               "stage3_epochs_scored": self.stage3_epochs_scored}
        if self.classifier_epochs:
            out.update(gzsl_epochs=self.classifier_epochs[0], czsl_epochs=self.classifier_epochs[1])
        if self.calibration:
            out["calibration"] = self.calibration.to_json()
        if self.preset_choice:
            out["preset_choice"] = self.preset_choice
        return out


@dataclass(frozen=True)
class RunPlan:
    """How a run scores and what classifier recipe it trains with. The validation view's run
    scores held-out images after every classifier epoch (and every `--stage3_eval_every`
    stage-3 epochs) and finds each scoring's best seen-score offset: that is what the real run
    is chosen by. The real run scores test data once, after the last epoch, unless the labelled
    published protocol asks for more; it trains with what was chosen on validation. Only the
    real run's model is anyone's to use: the view's leaves its results.json, not a model folder
    (weights, card, code: ~200 MB at CUB size, per candidate preset)."""

    stage3_score_every: int
    score_every_classifier_epoch: bool
    choose_offset: bool
    saves_model: bool
    choice: ValidationChoice | None = None

    @classmethod
    def for_view(cls, args: SCEGGTrainingArguments) -> RunPlan:
        return cls(stage3_score_every=args.stage3_eval_every, score_every_classifier_epoch=True,
                   choose_offset=args.calibration == "validation", saves_model=False)

    @classmethod
    def for_real_run(cls, args: SCEGGTrainingArguments, choice: ValidationChoice | None) -> RunPlan:
        return cls(stage3_score_every=int(args.published_protocol == "full"),
                   score_every_classifier_epoch=args.published_protocol == "classifier", choose_offset=False,
                   saves_model=True, choice=choice)

    @property
    def classifier_epochs(self) -> tuple[int, int] | None:
        """(GZSL, CZSL) epochs chosen on validation, None for the fixed schedule."""
        return self.choice.classifier_epochs if self.choice else None

    @property
    def seen_score_offset(self) -> float:
        return self.choice.seen_score_offset if self.choice else 0.0


@dataclass
class EpochScores:
    """Scores kept per epoch: after every classifier epoch of the final classifiers, and per
    scored stage-3 epoch the scores of fresh classifiers after each of their epochs. The view's
    run chooses from them; the real run keeps them only for the labelled published protocol."""

    by_classifier_epoch: list[Scores] = field(default_factory=list)
    by_stage3_epoch: dict[int, list[Scores]] = field(default_factory=dict)


@dataclass
class Progress:
    """What a snapshot records besides weights and features, so a resumed run ends as an
    uninterrupted one: seconds per stage, stage 2's fidelity, per-epoch scores, the final
    results and the loss histories (`progress.json`)."""

    timings: dict[str, float] = field(default_factory=dict)
    stage2_fidelity: dict[str, float] | None = None
    scores: EpochScores = field(default_factory=EpochScores)
    results: Scores | None = None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"timings": self.timings, "stage2_fidelity": self.stage2_fidelity, "results": self.results,
                "scores_by_epoch": self.scores.by_classifier_epoch,
                "stage3_scores": {str(e): s for e, s in self.scores.by_stage3_epoch.items()}, "history": self.history}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Progress:
        scores = EpochScores(by_classifier_epoch=saved.get("scores_by_epoch", []),
                             by_stage3_epoch={int(e): s for e, s in saved.get("stage3_scores", {}).items()})
        return cls(timings=saved["timings"], stage2_fidelity=saved.get("stage2_fidelity"), scores=scores,
                   results=saved.get("results"),
                   history={k: [tuple(p) for p in v] for k, v in saved.get("history", {}).items()})


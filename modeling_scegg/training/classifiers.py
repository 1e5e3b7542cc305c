"""Final stage: synthesise unseen features, train the GZSL and CZSL classifiers, evaluate.

The classifiers train for a fixed number of epochs (chosen beforehand, or selected on a
validation split by the pipeline) and the last epoch is reported: no number here is chosen by
looking at test accuracy. Per-epoch scores, when asked for, are only returned to the caller.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from ..data.backbone import AUTOCAST_DTYPES
from ..evaluation import calibrated_predictions, choose_seen_score_offset, mean_per_class_accuracy, zsl_scores
from ..modeling_scegg import check_unseen_order, classifier_epoch, classifier_optimizer
from .common import (
    RunContext,
    optimizer_step,
    release_stage_memory,
    restore_forward,
    run_steps,
    sharded_map,
)
from .state import FeatureCache, Scores


def autocast_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype autocast casts a Linear's input to under `mixed_precision`. Classifiers trained
    under that autocast compute exactly the same from inputs stored in it, and the stage's
    largest tensor halves (at CUB size, 22k training rows of 6456 inputs: 570 MB in float32)."""
    return AUTOCAST_DTYPES.get(mixed_precision, torch.float32)


def synthesize_unseen(ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """`syn_num` features per unseen class from a stream every process shares."""
    generator = torch.Generator().manual_seed(ctx.args.seed * 1_000 + 499)
    features, labels = ctx.model.synthesize(ctx.model.config.unseen_class_ids, ctx.args.syn_num, generator=generator)
    return features.cpu(), labels.cpu()


@torch.no_grad()
def _classifier_scores(accelerator, classifier, inputs: torch.Tensor, batch_size: int) -> np.ndarray:
    """Scores (N, K) of `classifier` on `inputs`, sharded over processes, each sample counted once."""
    device = accelerator.device

    def compute(indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": classifier(inputs[indices.cpu()].to(device)).float()}

    return sharded_map(accelerator, len(inputs), batch_size, compute)["scores"].numpy()


@dataclass
class ClassifierData:
    """Inputs and targets of both classifiers, and the test features they are scored on."""

    gzsl_x: torch.Tensor
    gzsl_y: torch.Tensor
    czsl_x: torch.Tensor
    czsl_y: torch.Tensor
    test_seen_x: torch.Tensor
    test_unseen_x: torch.Tensor
    refs_gzsl: np.ndarray
    refs_czsl: np.ndarray
    unseen: torch.Tensor

    seen: torch.Tensor

    def scores(self, gzsl_seen: np.ndarray, gzsl_unseen: np.ndarray, czsl: np.ndarray, choose_offset: bool = False,
               seen_score_offset: float = 0.0) -> Scores:
        """CZSL Acc and GZSL U / S / H in percent from the classifiers' scores on the test
        features, the GZSL ones after `seen_score_offset`. With `choose_offset` (held-out data
        only: the validation view), also the offset that maximises H there, under "calibration"."""
        gzsl_scores = np.concatenate([gzsl_seen, gzsl_unseen])
        predicted = calibrated_predictions(gzsl_scores, self.seen.tolist(), seen_score_offset)
        result = zsl_scores(predicted, self.refs_gzsl, self.unseen.numpy()[czsl.argmax(axis=1)], self.refs_czsl,
                            self.unseen.tolist())
        # the symptom of a collapse to the seen classes: unseen test images called seen classes
        result["gzsl_unseen_as_seen"] = 100 * float(np.isin(predicted[len(gzsl_seen):], self.seen.numpy()).mean())
        # and its mirror: seen test images called unseen classes
        result["gzsl_seen_as_unseen"] = 100 * float(np.isin(predicted[:len(gzsl_seen)], self.unseen.numpy()).mean())
        result.update(side_accuracies(gzsl_seen, gzsl_unseen, self.refs_gzsl, self.seen.numpy(), self.unseen.numpy()))
        if choose_offset:
            result["calibration"] = choose_seen_score_offset(gzsl_scores, self.refs_gzsl, self.seen.tolist(),
                                                             self.unseen.tolist())
        return result


SIDE_KEYS = ("gzsl_seen_only", "gzsl_unseen_only")  # the same with and without a seen-score offset


def side_accuracies(gzsl_seen: np.ndarray, gzsl_unseen: np.ndarray, refs: np.ndarray, seen: np.ndarray,
                    unseen: np.ndarray) -> dict[str, float]:
    """Which side a GZSL collapse comes from, in percent: the GZSL classifier restricted to the
    seen classes on test_seen (`gzsl_seen_only`: can it still tell the seen classes apart?) and
    to the unseen classes on test_unseen (`gzsl_unseen_only`). Neither depends on a seen-score
    offset. A low S with a high seen-only accuracy is a bias between the sides, which calibration
    can repair; a low seen-only accuracy no offset repairs."""
    seen_refs, unseen_refs = refs[:len(gzsl_seen)], refs[len(gzsl_seen):]
    seen_pred = seen[gzsl_seen[:, seen].argmax(axis=1)]
    unseen_pred = unseen[gzsl_unseen[:, unseen].argmax(axis=1)]
    return {"gzsl_seen_only": 100 * mean_per_class_accuracy(seen_pred, seen_refs),
            "gzsl_unseen_only": 100 * mean_per_class_accuracy(unseen_pred, unseen_refs)}


def prepare_classifier_data(ctx: RunContext, cache: FeatureCache, train_dtype: torch.dtype = torch.float32) -> ClassifierData:
    """Real seen plus synthetic unseen features for GZSL, synthetic unseen alone for CZSL; the
    training inputs in `train_dtype` (see `autocast_dtype`), the test inputs in float32, as the
    saved model computes them."""
    model, train = ctx.model, cache.train
    unseen = model.unseen_class_ids.cpu()
    check_unseen_order(unseen)
    syn_x, syn_y = synthesize_unseen(ctx)
    gzsl_x = model.classifier_inputs([train.features, syn_x], train_dtype)
    del syn_x  # before the test inputs are computed
    return ClassifierData(
        gzsl_x=gzsl_x,
        gzsl_y=torch.cat([train.labels, syn_y]),
        czsl_x=gzsl_x[len(train.features):],  # the synthetic rows, shared rather than computed twice
        czsl_y=torch.searchsorted(unseen, syn_y),
        test_seen_x=model.classifier_inputs([cache.test_seen.features]),
        test_unseen_x=model.classifier_inputs([cache.test_unseen.features]),
        refs_gzsl=torch.cat([cache.test_seen.labels, cache.test_unseen.labels]).numpy(),
        refs_czsl=cache.test_unseen.labels.numpy(),
        unseen=unseen,
        seen=ctx.model.seen_class_ids.cpu(),
    )


def train_epoch(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rng: np.random.Generator,
    batch_size: int,
    step: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> torch.Tensor:
    """One pass in an order drawn from the stage's `rng` (`classifier_epoch`, which the
    add-classes refit runs too); with several processes each takes its share of every batch.
    Returns the mean loss, on the device."""
    order = torch.from_numpy(rng.permutation(len(x)))
    return classifier_epoch(classifier, x, y, order, batch_size, step, device, rank, world)


def _classifier_steps(accelerator: Accelerator | None, classifiers, lr: float) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """`classifier_optimizer` for each classifier, as a loss -> step callable; through Accelerate
    when the classifiers were prepared, plainly for local copies."""
    steps = []
    for classifier in classifiers:
        optimizer = classifier_optimizer(classifier.parameters(), lr)
        if accelerator is not None:
            optimizer = accelerator.prepare(optimizer)
        steps.append(functools.partial(optimizer_step, accelerator, optimizer))
    return steps


def train_and_evaluate_classifiers(
    ctx: RunContext,
    cache: FeatureCache,
    epochs: tuple[int, int] | None = None,
    score_every_epoch: bool = False,
    choose_offset: bool = False,
    seen_score_offset: float = 0.0,
) -> tuple[Scores, list[Scores]]:
    """Train both classifiers on real seen + synthetic unseen features and score the test splits.

    `epochs` = (GZSL, CZSL) epochs, `classifier_epochs` for both by default. With
    `score_every_epoch` the test splits are also scored after every epoch (with `choose_offset`, each
    epoch also gets the seen-score offset that is best there: for held-out data only); those
    scores are returned for a caller that selects epochs (on validation data) or reports the
    published, test-selected numbers, and never feed back into training. The final GZSL scores
    are calibrated by `seen_score_offset`, with the uncalibrated ones beside them."""
    # the stage's inputs (at CUB size ~0.5 GB) are _classifier_stage's locals: gone before the heap is trimmed
    results, by_epoch, prepared = _classifier_stage(ctx, cache, epochs or (ctx.args.classifier_epochs,) * 2,
                                                    score_every_epoch, choose_offset, seen_score_offset)
    release_stage_memory(ctx.accelerator, *prepared)
    return results, by_epoch


def _classifier_stage(ctx: RunContext, cache: FeatureCache, epochs: tuple[int, int], score_every_epoch: bool,
                      choose_offset: bool, seen_score_offset: float) -> tuple[Scores, list[Scores], tuple[nn.Module, nn.Module]]:
    args, model, accelerator = ctx.args, ctx.model, ctx.accelerator
    gzsl_epochs, czsl_epochs = epochs
    data = prepare_classifier_data(ctx, cache, autocast_dtype(accelerator.mixed_precision))
    gzsl, czsl = accelerator.prepare(model.gzsl_classifier.train(), model.czsl_classifier.train())
    steps = _classifier_steps(accelerator, (gzsl, czsl), args.classifier_lr)
    state = ctx.stage_state("classifiers", per_process=False)
    shard = dict(device=accelerator.device, rank=accelerator.process_index, world=accelerator.num_processes)

    def test_scores() -> list:
        return [_classifier_scores(accelerator, c, x, args.eval_batch_size)
                for c, x in ((gzsl, data.test_seen_x), (gzsl, data.test_unseen_x), (czsl, data.test_unseen_x))]

    def step(state) -> dict[str, float]:
        logs = {}
        if state.step < gzsl_epochs:
            logs["gzsl_loss"] = train_epoch(gzsl, data.gzsl_x, data.gzsl_y, state.numpy_rng, args.syn_num, steps[0], **shard)
        if state.step < czsl_epochs:
            logs["czsl_loss"] = train_epoch(czsl, data.czsl_x, data.czsl_y, state.numpy_rng, args.syn_num, steps[1], **shard)
        if score_every_epoch:
            state.extra.setdefault("scores_by_epoch", []).append(data.scores(*test_scores(), choose_offset=choose_offset))
        return logs

    run_steps(ctx, "classifiers", max(gzsl_epochs, czsl_epochs), state, step)
    restore_forward(accelerator, gzsl, czsl)  # the final scores are what the saved model predicts
    model.gzsl_classifier.eval()
    model.czsl_classifier.eval()
    final = test_scores()  # scored once: the calibrated and uncalibrated metrics read the same outputs
    results = data.scores(*final, seen_score_offset=seen_score_offset)
    if seen_score_offset:
        results["uncalibrated"] = {k: v for k, v in data.scores(*final).items() if k.startswith("gzsl_") and k not in SIDE_KEYS}
    results.update(num_test_seen=int(len(data.test_seen_x)), num_test_unseen=int(len(data.test_unseen_x)),
                   num_synthetic_per_class=args.syn_num, classifier_epochs={"gzsl": gzsl_epochs, "czsl": czsl_epochs})
    return results, state.extra.get("scores_by_epoch", []), (gzsl, czsl)


def score_classifier_schedule(
    ctx: RunContext,
    cache: FeatureCache,
    seed: Sequence[int],
    choose_offset: bool = False,
) -> list[Scores]:
    """Scores after every epoch of copies of both (still untrained) classifiers, trained on this
    process alone. Stage 3 calls it to score its epochs (validation data to choose its own epoch
    count; test data only for the labelled published protocol); every process computes the same
    numbers, so no communication is needed and training is untouched."""
    args, model = ctx.args, ctx.model
    device = model.class_attributes.device
    data = prepare_classifier_data(ctx, cache)
    gzsl, czsl = copy.deepcopy(model.gzsl_classifier).train(), copy.deepcopy(model.czsl_classifier).train()
    steps = _classifier_steps(None, (gzsl, czsl), args.classifier_lr)
    rng = np.random.default_rng(seed)
    by_epoch = []
    for _ in range(args.classifier_epochs):
        train_epoch(gzsl, data.gzsl_x, data.gzsl_y, rng, args.syn_num, steps[0], device)
        train_epoch(czsl, data.czsl_x, data.czsl_y, rng, args.syn_num, steps[1], device)
        with torch.no_grad():
            by_epoch.append(data.scores(_local_scores(gzsl, data.test_seen_x, device),
                                        _local_scores(gzsl, data.test_unseen_x, device),
                                        _local_scores(czsl, data.test_unseen_x, device), choose_offset=choose_offset))
    return by_epoch


def _local_scores(classifier: torch.nn.Module, x: torch.Tensor, device: torch.device, chunk: int = 4096) -> np.ndarray:
    return torch.cat([classifier(x[i:i + chunk].to(device)).float().cpu() for i in range(0, len(x), chunk)]).numpy()


def best_epochs(by_epoch: list[Scores], calibrated: bool = False) -> Scores:
    """The epoch with the highest CZSL accuracy and the one with the highest GZSL H (1-based),
    with their scores; with `calibrated`, H after each epoch's own best seen-score offset, which
    is returned as `seen_score_offset`. The pipeline applies it to validation scores
    (`--selection validation`, `--calibration validation`) and, only with
    `--published_protocol`, to test scores reported under a test-selected label."""
    def gzsl(entry: dict) -> dict:
        if not calibrated:
            return {k: entry[k] for k in ("gzsl_unseen", "gzsl_seen", "gzsl_h")}
        return {k: entry["calibration"][k] for k in ("gzsl_unseen", "gzsl_seen", "gzsl_h", "seen_score_offset")}

    gzsl_index = max(range(len(by_epoch)), key=lambda i: gzsl(by_epoch[i])["gzsl_h"])
    czsl_index = max(range(len(by_epoch)), key=lambda i: by_epoch[i]["czsl_acc"])
    return {"czsl_acc": by_epoch[czsl_index]["czsl_acc"], "czsl_epoch": czsl_index + 1,
            **gzsl(by_epoch[gzsl_index]), "gzsl_epoch": gzsl_index + 1}

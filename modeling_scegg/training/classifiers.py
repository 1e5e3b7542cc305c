"""Final stage: synthesise unseen features, train the GZSL and CZSL classifiers, evaluate.

The classifiers train for a fixed number of epochs (chosen beforehand, or selected on a
validation split by the pipeline) and the last epoch is reported: no number here is chosen by
looking at test accuracy. Per-epoch scores, when asked for, are only returned to the caller.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import ZSLAccuracy
from .common import RunContext, optimizer_step, run_steps, sharded_map


@torch.no_grad()
def classifier_inputs(ctx: RunContext, dense: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """[x, Dec(x), Dec_hidden(x)] (or x) for many features, in chunks to bound memory."""
    model = ctx.model
    device = model.class_attributes.device
    return torch.cat([model.classifier_features(dense[i:i + chunk].to(device)).cpu()
                      for i in range(0, len(dense), chunk)])


def synthesize_unseen(ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """`syn_num` features per unseen class from a stream every process shares."""
    generator = torch.Generator().manual_seed(ctx.args.seed * 1_000 + 499)
    features, labels = ctx.model.synthesize(ctx.model.config.unseen_class_ids, ctx.args.syn_num, generator=generator)
    return features.cpu(), labels.cpu()


@torch.no_grad()
def _evaluate(ctx, accelerator, classifier, inputs: torch.Tensor, restrict: torch.Tensor | None) -> np.ndarray:
    """Predicted class ids for `inputs`, sharded over processes, each sample counted once."""
    device = accelerator.device

    def compute(indices: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = classifier(inputs[indices.cpu()].to(device))
        return {"prediction": scores.argmax(-1)}

    predicted = sharded_map(accelerator, len(inputs), ctx.args.eval_batch_size, compute)["prediction"]
    return (restrict.cpu()[predicted] if restrict is not None else predicted).numpy()


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

    def scores(self, seen_predictions: np.ndarray, unseen_predictions: np.ndarray, czsl_predictions: np.ndarray) -> dict[str, float]:
        """CZSL Acc and GZSL U / S / H in percent from predicted class ids."""
        metric = ZSLAccuracy()
        gz = metric.compute(predictions=np.concatenate([seen_predictions, unseen_predictions]),
                            references=self.refs_gzsl, unseen_class_ids=self.unseen.tolist())
        cz = metric.compute(predictions=czsl_predictions, references=self.refs_czsl)
        return {"czsl_acc": 100 * cz["accuracy"], "gzsl_unseen": 100 * gz["unseen"],
                "gzsl_seen": 100 * gz["seen"], "gzsl_h": 100 * gz["harmonic_mean"]}


def prepare_classifier_data(
    ctx: RunContext, train_cache: dict[str, torch.Tensor], test_caches: dict[str, dict[str, torch.Tensor]]
) -> ClassifierData:
    """Real seen plus synthetic unseen features for GZSL, synthetic unseen alone for CZSL."""
    unseen = ctx.model.unseen_class_ids.cpu()
    _check_unseen_order(unseen)
    syn_x, syn_y = synthesize_unseen(ctx)
    return ClassifierData(
        gzsl_x=classifier_inputs(ctx, torch.cat([train_cache["features"], syn_x])),
        gzsl_y=torch.cat([train_cache["labels"], syn_y]),
        czsl_x=classifier_inputs(ctx, syn_x),
        czsl_y=torch.searchsorted(unseen, syn_y),
        test_seen_x=classifier_inputs(ctx, test_caches["test_seen"]["features"]),
        test_unseen_x=classifier_inputs(ctx, test_caches["test_unseen"]["features"]),
        refs_gzsl=torch.cat([test_caches["test_seen"]["labels"], test_caches["test_unseen"]["labels"]]).numpy(),
        refs_czsl=test_caches["test_unseen"]["labels"].numpy(),
        unseen=unseen,
    )


def train_epoch(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rng: np.random.Generator,
    batch_size: int,
    step: Callable[[torch.Tensor], float],
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> float:
    """One shuffled pass; with several processes each takes its share of every batch."""
    order = torch.from_numpy(rng.permutation(len(x)))
    losses = []
    for start in range(0, len(x), batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < world:  # too short to give every process a sample: all skip it alike
            continue
        batch = batch[rank::world]
        losses.append(step(F.cross_entropy(classifier(x[batch].to(device)), y[batch].to(device))))
    return float(np.mean(losses))


def train_and_evaluate_classifiers(
    ctx: RunContext,
    train_cache: dict[str, torch.Tensor],
    test_caches: dict[str, dict[str, torch.Tensor]],
    epochs: tuple[int, int] | None = None,
    score_every_epoch: bool = False,
) -> tuple[dict, list[dict[str, float]]]:
    """Train both classifiers on real seen + synthetic unseen features and score the test splits.

    `epochs` = (GZSL, CZSL) epochs, `classifier_epochs` for both by default. With
    `score_every_epoch` the test splits are also scored after every epoch; those scores are
    returned for a caller that selects epochs (on validation data) or reports the published,
    test-selected numbers, and never feed back into training."""
    args, model = ctx.args, ctx.model
    gzsl_epochs, czsl_epochs = epochs or (args.classifier_epochs, args.classifier_epochs)
    accelerator = ctx.make_accelerator()
    data = prepare_classifier_data(ctx, train_cache, test_caches)
    gzsl, czsl = model.gzsl_classifier.train(), model.czsl_classifier.train()
    optimizers = [torch.optim.Adam(m.parameters(), lr=args.classifier_lr, betas=(0.5, 0.999)) for m in (gzsl, czsl)]
    gzsl, czsl, opt_gzsl, opt_czsl = accelerator.prepare(gzsl, czsl, *optimizers)
    state = ctx.stage_state("classifiers", accelerator, per_process=False)
    shard = dict(device=accelerator.device, rank=accelerator.process_index, world=accelerator.num_processes)

    def scores() -> dict[str, float]:
        return data.scores(_evaluate(ctx, accelerator, gzsl, data.test_seen_x, None),
                           _evaluate(ctx, accelerator, gzsl, data.test_unseen_x, None),
                           _evaluate(ctx, accelerator, czsl, data.test_unseen_x, data.unseen))

    def step(state) -> dict[str, float]:
        logs = {}
        if state.step < gzsl_epochs:
            logs["gzsl_loss"] = train_epoch(gzsl, data.gzsl_x, data.gzsl_y, state.numpy_rng, args.syn_num,
                                            lambda loss: optimizer_step(accelerator, opt_gzsl, loss), **shard)
        if state.step < czsl_epochs:
            logs["czsl_loss"] = train_epoch(czsl, data.czsl_x, data.czsl_y, state.numpy_rng, args.syn_num,
                                            lambda loss: optimizer_step(accelerator, opt_czsl, loss), **shard)
        if score_every_epoch:
            state.extra.setdefault("scores_by_epoch", []).append(scores())
        return logs

    run_steps(ctx, accelerator, "classifiers", max(gzsl_epochs, czsl_epochs), state, step)
    model.gzsl_classifier.eval()
    model.czsl_classifier.eval()
    results = {**scores(), "num_test_seen": int(len(data.test_seen_x)), "num_test_unseen": int(len(data.test_unseen_x)),
               "num_synthetic_per_class": args.syn_num, "classifier_epochs": {"gzsl": gzsl_epochs, "czsl": czsl_epochs}}
    accelerator.free_memory()
    return results, state.extra.get("scores_by_epoch", [])


def score_classifier_schedule(
    ctx: RunContext,
    train_cache: dict[str, torch.Tensor],
    test_caches: dict[str, dict[str, torch.Tensor]],
    seed: Sequence[int],
) -> list[dict[str, float]]:
    """Scores after every epoch of copies of both (still untrained) classifiers, trained on this
    process alone. Stage 3 calls it on validation data to choose its own epoch count; every
    process computes the same numbers, so no communication is needed and training is untouched."""
    args, model = ctx.args, ctx.model
    device = model.class_attributes.device
    data = prepare_classifier_data(ctx, train_cache, test_caches)
    gzsl, czsl = copy.deepcopy(model.gzsl_classifier).train(), copy.deepcopy(model.czsl_classifier).train()
    steps = [_local_step(torch.optim.Adam(m.parameters(), lr=args.classifier_lr, betas=(0.5, 0.999))) for m in (gzsl, czsl)]
    rng = np.random.default_rng(seed)
    by_epoch = []
    for _ in range(args.classifier_epochs):
        train_epoch(gzsl, data.gzsl_x, data.gzsl_y, rng, args.syn_num, steps[0], device)
        train_epoch(czsl, data.czsl_x, data.czsl_y, rng, args.syn_num, steps[1], device)
        with torch.no_grad():
            by_epoch.append(data.scores(_predict(gzsl, data.test_seen_x, device), _predict(gzsl, data.test_unseen_x, device),
                                        data.unseen[_predict(czsl, data.test_unseen_x, device)].numpy()))
    return by_epoch


def _local_step(optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], float]:
    def step(loss: torch.Tensor) -> float:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return step


def _predict(classifier: torch.nn.Module, x: torch.Tensor, device: torch.device, chunk: int = 4096) -> np.ndarray:
    return torch.cat([classifier(x[i:i + chunk].to(device)).argmax(-1).cpu() for i in range(0, len(x), chunk)]).numpy()


def _check_unseen_order(unseen: torch.Tensor) -> None:
    """The CZSL head's outputs follow `config.unseen_class_ids`; training maps labels through the
    sorted ids, so the config must list them sorted (the data loaders do)."""
    if not torch.equal(unseen, unseen.sort().values):
        raise ValueError(f"config.unseen_class_ids must be sorted, got {unseen.tolist()[:10]}")


def best_epochs(by_epoch: list[dict[str, float]]) -> dict:
    """The epoch with the highest CZSL accuracy and the one with the highest GZSL H (1-based),
    with their scores. The pipeline applies it to validation scores (`--selection validation`)
    and, only with `--published_protocol`, to test scores reported under a test-selected label."""
    gzsl_index = max(range(len(by_epoch)), key=lambda i: by_epoch[i]["gzsl_h"])
    czsl_index = max(range(len(by_epoch)), key=lambda i: by_epoch[i]["czsl_acc"])
    return {"czsl_acc": by_epoch[czsl_index]["czsl_acc"], "czsl_epoch": czsl_index + 1,
            **{k: by_epoch[gzsl_index][k] for k in ("gzsl_unseen", "gzsl_seen", "gzsl_h")}, "gzsl_epoch": gzsl_index + 1}

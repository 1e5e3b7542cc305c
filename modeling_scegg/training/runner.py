"""One resumable run of every stage on one dataset: data -> stage 1 -> feature cache -> stage 2
-> stage 3 -> classifiers -> saved model, results.json, plots, model card (and optionally the
Hub). The real run and the validation view's run are both this; their `RunPlan` says how each
scores its epochs.

A run has one `Accelerator` (logging, barriers, and every stage's prepared networks). After every
stage a snapshot (model weights, feature cache, progress) is written atomically, so `--resume`
restarts at the first unfinished stage and, inside it, at its last step checkpoint.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed

from ..configuration_scegg import SCEGGConfig
from ..data import ZSLDataset
from ..data.store import RegionFeatureReader
from ..export import write_results_file
from ..modeling_scegg import SCEGGModel
from ..optional import require_plots
from .arguments import SCEGGTrainingArguments
from .checkpointing import STAGES, CheckpointManager
from .classifiers import score_classifier_schedule, train_and_evaluate_classifiers
from .common import RunContext, release_stage_memory
from .loading import build_config
from .outputs import run_results, write_outputs
from .run_lock import run_identity
from .snapshots import read_snapshot, snapshot_writer
from .stage1 import compute_dense_features, train_stage1
from .stage2 import regression_fidelity, train_stage2
from .stage3 import train_stage3
from .state import CACHED_SPLITS, FeatureCache, Progress, RunPlan, Scores, ValidationChoice

logger = get_logger(__name__)


def run_accelerator(args: SCEGGTrainingArguments) -> Accelerator:
    """The run's one Accelerator: mixed precision, trackers (TensorBoard when installed, with
    `--log_with auto`) logging under `output_dir/runs`."""
    log_with = args.log_with
    if log_with == "auto":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            log_with = None
    log_with = None if log_with in (None, "none") else log_with
    project = ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "runs"))
    return Accelerator(mixed_precision=args.mixed_precision, log_with=log_with, project_config=project)


def _check_output_dir(args: SCEGGTrainingArguments, checkpoints: CheckpointManager, accelerator: Accelerator) -> None:
    """A fresh run must not mix with the checkpoints of an earlier one. An unfinished run is kept
    (it may be worth resuming); a finished one is replaced, so re-running a command just works.
    Every process inspects the folder before any process changes it."""
    accelerator.wait_for_everyone()
    existing = not args.resume and checkpoints.root.is_dir() and any(checkpoints.root.iterdir())
    finished = existing and checkpoints.last_finished_stage() == STAGES[-1]
    accelerator.wait_for_everyone()
    if existing and not finished:
        raise FileExistsError(
            f"{checkpoints.root} holds checkpoints of an unfinished run: pass --resume true to continue "
            f"it, or choose another --output_dir"
        )
    if finished:
        logger.warning(f"replacing the finished run in {args.output_dir}", main_process_only=True)
        if accelerator.is_main_process:
            shutil.rmtree(checkpoints.root)
    accelerator.wait_for_everyone()


class _Timer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = round(time.perf_counter() - self.start, 2)
        if exc[0] is None:
            logger.info(f"{self.name} finished in {self.timings[self.name]:.1f} s", main_process_only=True)


@dataclass
class Run:
    """One resumable run of all stages on one dataset: its context (arguments, model, the one
    Accelerator, checkpoints), the feature cache (from stage 1 on), the progress record that
    every snapshot saves, and its plan (the validation view's run, or the real one with what was
    chosen on validation)."""

    ctx: RunContext
    data: ZSLDataset
    cache: FeatureCache | None
    progress: Progress
    done: int
    plan: RunPlan

    def stage(self, name: str) -> _Timer:
        return _Timer(self.progress.timings, name)

    def finish(self, stage: str) -> None:
        self.ctx.checkpoints.finish_stage(self.ctx.accelerator, stage,
                                          snapshot_writer(self.ctx.model, self.cache, self.progress))

    def pending(self, stage: str) -> bool:
        """Whether `stage` still has to run (a resumed run skips the finished ones)."""
        return STAGES.index(stage) >= self.done


def start_run(args: SCEGGTrainingArguments, data: ZSLDataset, choice: ValidationChoice | None = None,
              plan: RunPlan | None = None) -> Run:
    """A fresh model with the data's class semantics, or the newest snapshot with `--resume`.
    The real run (`plan` None) trains with `choice`, what was chosen on validation."""
    if args.plots:
        require_plots()
    accelerator = run_accelerator(args)
    checkpoints = CheckpointManager(args.output_dir)
    with checkpoints.held_for_the_run(accelerator.is_main_process):  # one run per folder, until finish_run
        _check_output_dir(args, checkpoints, accelerator)
        checkpoints.check_identity(run_identity(args, data), args.resume, accelerator.is_main_process)
    set_seed(args.seed)
    config = build_config(data, args.model_config_overrides())
    finished = checkpoints.last_finished_stage() if args.resume else None
    if finished:
        model, cache, progress = read_snapshot(checkpoints.snapshot_dir(finished), accelerator.device)
        logger.info(f"resuming after {finished}", main_process_only=True)
    else:
        model, cache, progress = _fresh_model(args.seed, config, data, accelerator.device), None, Progress()
    accelerator.init_trackers("scegg", config={k: str(v) for k, v in dataclasses.asdict(args).items()})
    ctx = RunContext(args=args, model=model, accelerator=accelerator, checkpoints=checkpoints, history=progress.history)
    return Run(ctx=ctx, data=data, cache=cache, progress=progress, done=STAGES.index(finished) + 1 if finished else 0,
               plan=plan or RunPlan.for_real_run(args, choice))


def _fresh_model(seed: int, config: SCEGGConfig, data: ZSLDataset, device: torch.device) -> SCEGGModel:
    """The model initialised from the run's seed, with the data's class semantics installed."""
    torch.manual_seed(seed)
    model = SCEGGModel(config).to(device)
    word_vectors = data.semantics.word_vectors
    model.set_class_semantics(torch.from_numpy(data.semantics.attributes),
                              None if word_vectors is None else torch.from_numpy(word_vectors))
    return model


def _scale(model: SCEGGModel, cache: FeatureCache) -> None:
    """Fit the min-max scaler on trainval g and map every split's g through it."""
    device = model.class_attributes.device
    model.scen.fit_scaler(cache.train.features.to(device))
    with torch.no_grad():
        for split in cache.splits().values():
            split.features = model.scen.scale(split.features.to(device)).cpu()


def run_stage1(run: Run) -> None:
    """Train the SCEN with L_S1 (Eq. 16), then cache the dense features g (and p_l) of every
    image, min-max scaled: later stages never read region features again."""
    if not run.pending("stage1"):
        return
    ctx, splits = run.ctx, run.data.splits
    with run.stage("stage1"):
        if ctx.model.config.dense_feature_source == "scen":
            train_stage1(ctx, RegionFeatureReader(splits["train"]))
        run.cache = FeatureCache(**{split: compute_dense_features(ctx, RegionFeatureReader(splits[split]), split == "train")
                                    for split in CACHED_SPLITS})
        release_stage_memory(ctx.accelerator)  # the caching pass's loaders
        _scale(ctx.model, run.cache)
    run.finish("stage1")


def run_stage2(run: Run) -> None:
    """Train the regression head CLS_g on the cache with L_S2 = L_SCR (Eq. 17), when L_EGS will
    use it."""
    if not run.pending("stage2"):
        return
    with run.stage("stage2"):
        if _needs_stage2(run.ctx.model.config):
            train_stage2(run.ctx, run.cache.train)
            run.progress.stage2_fidelity = regression_fidelity(run.ctx, run.cache.train)
            logger.info(f"stage 2 head vs local scores on trainval: {run.progress.stage2_fidelity}",
                        main_process_only=True)
    run.finish("stage2")


def _needs_stage2(config: SCEGGConfig) -> bool:
    """CLS_g only matters through L_EGS; the pooled baseline has no local scores to regress."""
    return bool(config.lambda_s or config.lambda_u) and config.dense_feature_source == "scen"


def run_stage3(run: Run) -> None:
    """Train the EGGN with L_S3 (Eq. 18), scoring fresh classifiers every
    `plan.stage3_score_every` epochs (the view's run: on its held-out images, to choose its own
    epoch count; `--published_protocol full`: on test, labelled test-selected)."""
    if not run.pending("stage3"):
        return
    ctx, plan = run.ctx, run.plan
    scorer = None
    if plan.stage3_score_every:
        def scorer(epoch: int) -> list[Scores]:
            # a seed sequence of its own, so these shuffles never share a stream with a stage's
            return score_classifier_schedule(ctx, run.cache, seed=(ctx.args.seed, 3, epoch),
                                             choose_offset=plan.choose_offset)
    with run.stage("stage3"):
        run.progress.scores.by_stage3_epoch = train_stage3(ctx, run.cache.train, scorer, plan.stage3_score_every)
    run.finish("stage3")


def run_classifiers(run: Run) -> None:
    """Synthesise unseen features, train the final GZSL and CZSL classifiers, score the test
    splits; the seen-score offset chosen on validation (if any) becomes part of the model."""
    if not run.pending("classifiers"):
        return
    plan = run.plan
    with run.stage("classifiers"):
        run.progress.results, run.progress.scores.by_classifier_epoch = train_and_evaluate_classifiers(
            run.ctx, run.cache, epochs=plan.classifier_epochs, score_every_epoch=plan.score_every_classifier_epoch,
            choose_offset=plan.choose_offset, seen_score_offset=plan.seen_score_offset)
        run.ctx.model.config.seen_score_offset = plan.seen_score_offset
    run.finish("classifiers")


def finish_run(run: Run) -> dict[str, Any]:
    """Keep what `add_classes` needs, then write the model, results.json, plots and card (and
    push); the validation view's run writes its results.json alone. Returns the results."""
    ctx, args = run.ctx, run.ctx.args
    results = run_results(args, run.data, run.progress, run.plan.choice)
    if run.plan.saves_model:
        # per-class statistics of the real seen features: add_classes refits without the training data
        ctx.model.record_refit_data(run.cache.train.features, run.cache.train.labels, args.syn_num,
                                    [run.progress.results["classifier_epochs"][k] for k in ("gzsl", "czsl")],
                                    args.classifier_lr)
        if ctx.accelerator.is_main_process:
            write_outputs(ctx, run.data, run.cache, results)
    elif ctx.accelerator.is_main_process:
        write_results_file(args.output_dir, results)  # atomic, creating the folder
    ctx.accelerator.wait_for_everyone()
    ctx.accelerator.end_training()
    ctx.checkpoints.release()
    return results


def train_and_evaluate(args: SCEGGTrainingArguments, data: ZSLDataset, choice: ValidationChoice | None = None,
                       plan: RunPlan | None = None) -> tuple[dict[str, Any], Run]:
    """One resumable run of all stages on `data` (the validation view's with
    `plan=RunPlan.for_view(args)`); returns the results and the finished run (its progress
    holds the per-epoch scores)."""
    run = start_run(args, data, choice, plan)
    run_stage1(run)
    run_stage2(run)
    run_stage3(run)
    run_classifiers(run)
    return finish_run(run), run

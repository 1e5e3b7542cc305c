"""The whole SC-EGG run: data -> stage 1 -> feature cache -> stage 2 -> stage 3 -> classifiers
-> saved model, results.json, plots, model card (and optionally the Hub).

After every stage a snapshot (model weights, feature cache, histories) is written atomically, so
`--resume` restarts at the first unfinished stage and, inside it, at its last step checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file

from ..configuration_scegg import SCEGGConfig
from ..data import ZSLDataset, load_zsl_dataset
from ..data.store import RegionFeatureReader
from ..data.synthetic import SyntheticConfig
from ..modeling_scegg import SCEGGModel
from ..optional import require_plots
from .arguments import SCEGGTrainingArguments, parse_key_values
from .checkpointing import STAGES, CheckpointManager
from .classifiers import (
    best_epochs,
    score_classifier_schedule,
    train_and_evaluate_classifiers,
)
from .common import RunContext, silence_noisy_loggers
from .preset_choice import choose_preset, resolve_preset_choice
from .run_lock import run_identity, run_locked
from .selection import has_validation_split, protocol_description, validation_view, view_arguments
from .stage1 import compute_dense_features, train_stage1
from .stage2 import regression_fidelity, train_stage2
from .stage3 import train_stage3

logger = get_logger(__name__)

PROTOCOL = "fixed schedule: the last epoch of every stage is reported; nothing is selected on test data"
PUBLISHED_LABELS = {
    "classifier": "published protocol, classifier level: best classifier epoch selected on the TEST set after the last "
                  "stage-3 epoch (optimistic)",
    "full": "published protocol: classifiers trained and scored on the TEST set after every stage-3 epoch, best classifier "
            "epoch of each, then the best stage-3 epoch, for CZSL and GZSL separately (as the paper's code reports; optimistic)",
}
CALIBRATION_LABEL = ("calibrated stacking (Chao et al., ECCV 2016): a constant subtracted from the seen classes' GZSL "
                     "scores, chosen on the validation view (val classes as pseudo-unseen), never on test")
_CACHE_FILE, _PROGRESS_FILE = "cache.safetensors", "progress.json"


def load_data(args: SCEGGTrainingArguments) -> ZSLDataset:
    """The run's dataset; converted once (by the main process first) and memory-mapped."""
    silence_noisy_loggers()
    # An Accelerator (not a bare PartialState, which ignores ACCELERATE_USE_CPU) sets up the
    # process group that every later barrier relies on.
    with Accelerator(mixed_precision=args.mixed_precision).main_process_first():
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


def _run_accelerator(args: SCEGGTrainingArguments) -> Accelerator:
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


def _check_output_dir(args: SCEGGTrainingArguments, checkpoints: CheckpointManager) -> None:
    """A fresh run must not mix with the checkpoints of an earlier one. An unfinished run is kept
    (it may be worth resuming); a finished one is replaced, so re-running a command just works.
    Every process inspects the folder before any process changes it."""
    state = PartialState()
    state.wait_for_everyone()
    existing = not args.resume and checkpoints.root.is_dir() and any(checkpoints.root.iterdir())
    finished = existing and checkpoints.last_finished_stage() == STAGES[-1]
    state.wait_for_everyone()
    if existing and not finished:
        raise FileExistsError(
            f"{checkpoints.root} holds checkpoints of an unfinished run: pass --resume true to continue "
            f"it, or choose another --output_dir"
        )
    if finished:
        logger.warning(f"replacing the finished run in {args.output_dir}", main_process_only=True)
        if state.is_main_process:
            shutil.rmtree(checkpoints.root)
    state.wait_for_everyone()


def _scale(model: SCEGGModel, caches: dict[str, dict[str, torch.Tensor]]) -> None:
    """Fit the min-max scaler on trainval g and map every split's g through it."""
    device = model.class_attributes.device
    model.scen.fit_scaler(caches["train"]["features"].to(device))
    with torch.no_grad():
        for cache in caches.values():
            cache["features"] = model.scen.scale(cache["features"].to(device)).cpu()


def _save_snapshot(ctx: RunContext, caches, progress: dict):
    def write(folder: Path) -> None:
        ctx.model.save_weights_and_code(folder)  # a resumable snapshot, not a model folder to share
        flat = {f"{split}/{k}": v.contiguous() for split, cache in caches.items() for k, v in cache.items()}
        save_file(flat, str(folder / _CACHE_FILE))
        (folder / _PROGRESS_FILE).write_text(json.dumps({**progress, "history": ctx.history}))

    return write


def _load_snapshot(folder: Path, device: torch.device) -> tuple[SCEGGModel, dict, dict]:
    model = SCEGGModel.from_pretrained(folder).to(device)
    caches: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(folder / _CACHE_FILE)).items():
        split, name = key.split("/", 1)
        caches.setdefault(split, {})[name] = value
    progress = json.loads((folder / _PROGRESS_FILE).read_text())
    return model, caches, progress


class _Timer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = round(time.perf_counter() - self.start, 2)
        if exc[0] is None:
            logger.info(f"{self.name} finished in {self.timings[self.name]:.1f} s", main_process_only=True)


def run_pipeline(args: SCEGGTrainingArguments) -> dict[str, Any]:
    """Train every stage and evaluate (what `scegg train` and examples/train_stages.py run);
    returns the results written to `results.json`."""
    data = load_data(args)
    with run_locked(args.output_dir):  # from the validation view's run to the end of the real one
        args, selection = choose_on_validation(args, data)
        return train_and_evaluate(args, data, selection=selection)[0]


def resolve_calibration(calibration: str, data: ZSLDataset) -> str:
    """`auto` calibrates wherever a validation view exists to choose the offset on (it was the
    better choice on the validation data of every benchmark layout: README, "Presets")."""
    if calibration != "auto":
        return calibration
    resolved = "validation" if has_validation_split(data) else "none"
    logger.info(f"--calibration auto: {resolved} ({data.name} {'has' if resolved == 'validation' else 'has no'} "
                f"train_sub / val splits)", main_process_only=True)
    return resolved


def choose_on_validation(args: SCEGGTrainingArguments, data: ZSLDataset) -> tuple[SCEGGTrainingArguments, dict | None]:
    """The choices that must not look at test data, made on the validation view of `data` in a
    full run of its own under `output_dir/validation`: the preset (`--preset_choice`, one view
    run per candidate under `output_dir/validation/<preset>`), the calibration offset
    (`--calibration`), and with `--selection validation` the classifier epochs (and, with
    `--stage3_eval_every`, the stage-3 epochs). Returns the arguments of the real run and what
    was chosen (None when nothing is)."""
    args = dataclasses.replace(args, calibration=resolve_calibration(args.calibration, data),
                               preset_choice=resolve_preset_choice(args, data))
    if args.preset_choice == "validation":
        args, selection, record = choose_preset(args, data, _select_on_validation)
        selection = {**selection, "preset_choice": record}
    elif args.selection != "validation" and args.calibration != "validation":
        return args, None
    else:
        selection = _select_on_validation(args, data)
    return dataclasses.replace(args, stage3_epochs=selection["stage3_epochs"]), selection


def _select_on_validation(args: SCEGGTrainingArguments, data: ZSLDataset, folder: Path | None = None) -> dict[str, Any]:
    """Run everything on the validation view (in `folder`, default `output_dir/validation`) and
    read off what the real run uses: with `--selection validation` the classifier epochs and,
    with `--stage3_eval_every`, the stage-3 epoch count (best GZSL H); with `--calibration
    validation` the seen-score offset that is best for the chosen GZSL epoch (H is then the
    calibrated H)."""
    view_args = view_arguments(args, folder or Path(args.output_dir) / "validation")
    view = validation_view(data, args.seed)
    _, progress = train_and_evaluate(view_args, view, view=True)
    calibrated, selects = args.calibration == "validation", args.selection == "validation"
    stage3_scores = progress.get("stage3_scores") or {}
    if stage3_scores:
        stage3_epochs = int(max(stage3_scores, key=lambda e: best_epochs(stage3_scores[e], calibrated)["gzsl_h"]))
        by_epoch = stage3_scores[str(stage3_epochs)]
    else:
        stage3_epochs, by_epoch = args.stage3_epochs, progress["scores_by_epoch"]
    best = best_epochs(by_epoch if selects else by_epoch[-1:], calibrated)
    selection = {"stage3_epochs": stage3_epochs, "validation_scores": best,
                 "validation_unseen_classes": [int(c) for c in view.semantics.unseen_class_ids],
                 "stage3_epochs_scored": sorted(int(e) for e in stage3_scores)}
    if selects:
        selection.update(gzsl_epochs=best["gzsl_epoch"], czsl_epochs=best["czsl_epoch"])
    if calibrated:
        entry = by_epoch[best["gzsl_epoch"] - 1] if selects else by_epoch[-1]
        selection["calibration"] = {"seen_score_offset": best["seen_score_offset"],
                                    "validation_gzsl_h": {"calibrated": best["gzsl_h"],
                                                          "uncalibrated": entry["gzsl_h"]}}
    return selection


@dataclass
class Run:
    """One resumable run of all stages on one dataset: its context, the feature cache, the
    progress record (timings, per-epoch scores, results) that every snapshot saves, what was
    chosen on validation, and whether this is the validation view's own run."""

    ctx: RunContext
    data: ZSLDataset
    caches: dict[str, dict[str, torch.Tensor]]
    progress: dict[str, Any]
    done: int
    selection: dict[str, Any] | None = None
    view: bool = False

    def stage(self, name: str) -> _Timer:
        return _Timer(self.progress["timings"], name)

    def finish(self, stage: str) -> None:
        self.ctx.checkpoints.finish_stage(self.ctx.accelerator, stage, _save_snapshot(self.ctx, self.caches, self.progress))

    def pending(self, stage: str) -> bool:
        """Whether `stage` still has to run (a resumed run skips the finished ones)."""
        return STAGES.index(stage) >= self.done

    @property
    def calibrate(self) -> bool:
        """The view's run scores every epoch with the offset that is best there."""
        return self.view and self.ctx.args.calibration == "validation"

    @property
    def test_caches(self) -> dict[str, dict[str, torch.Tensor]]:
        return {s: self.caches[s] for s in ("test_seen", "test_unseen")}


def start_run(args: SCEGGTrainingArguments, data: ZSLDataset, selection: dict | None = None, view: bool = False) -> Run:
    """A fresh model with the data's class semantics, or the newest snapshot with `--resume`."""
    if args.plots:
        require_plots()
    accelerator = _run_accelerator(args)
    checkpoints = CheckpointManager(args.output_dir)
    with checkpoints.held_for_the_run(accelerator.is_main_process):  # one run per folder, until finish_run
        _check_output_dir(args, checkpoints)
        checkpoints.check_identity(run_identity(args, data), args.resume, accelerator.is_main_process)
    set_seed(args.seed)
    config = build_config(data, args.model_config_overrides())
    finished = checkpoints.last_finished_stage() if args.resume else None
    if finished:
        model, caches, progress = _load_snapshot(checkpoints.snapshot_dir(finished), accelerator.device)
        logger.info(f"resuming after {finished}", main_process_only=True)
    else:
        torch.manual_seed(args.seed)
        model = SCEGGModel(config).to(accelerator.device)
        word_vectors = data.semantics.word_vectors
        model.set_class_semantics(torch.from_numpy(data.semantics.attributes),
                                  None if word_vectors is None else torch.from_numpy(word_vectors))
        caches, progress = {}, {"timings": {}}
    accelerator.init_trackers("scegg", config={k: str(v) for k, v in dataclasses.asdict(args).items()})
    ctx = RunContext(args=args, model=model, accelerator=accelerator, checkpoints=checkpoints,
                     history={k: [tuple(p) for p in v] for k, v in progress.get("history", {}).items()})
    return Run(ctx=ctx, data=data, caches=caches, progress=progress, done=STAGES.index(finished) + 1 if finished else 0,
               selection=selection, view=view)


def run_stage1(run: Run) -> None:
    """Train the SCEN with L_S1 (Eq. 16), then cache the dense features g (and p_l) of every
    image, min-max scaled: later stages never read region features again."""
    if not run.pending("stage1"):
        return
    ctx, splits = run.ctx, run.data.splits
    with run.stage("stage1"):
        if ctx.model.config.dense_feature_source == "scen":
            train_stage1(ctx, RegionFeatureReader(splits["train"]))
        run.caches = {split: compute_dense_features(ctx, RegionFeatureReader(splits[split]), split == "train")
                      for split in ("train", "test_seen", "test_unseen")}
        _scale(ctx.model, run.caches)
    run.finish("stage1")


def run_stage2(run: Run) -> None:
    """Train the regression head CLS_g on the cache with L_S2 = L_SCR (Eq. 17), when L_EGS will
    use it."""
    if not run.pending("stage2"):
        return
    with run.stage("stage2"):
        if _needs_stage2(run.ctx.model.config):
            train_stage2(run.ctx, run.caches["train"])
            run.progress["stage2_fidelity"] = regression_fidelity(run.ctx, run.caches["train"])
            logger.info(f"stage 2 head vs local scores on trainval: {run.progress['stage2_fidelity']}",
                        main_process_only=True)
    run.finish("stage2")


def run_stage3(run: Run) -> None:
    """Train the EGGN with L_S3 (Eq. 18). The view's run scores fresh classifiers on its
    held-out images every `--stage3_eval_every` epochs; `--published_protocol full` scores them
    on test after every epoch (labelled test-selected)."""
    if not run.pending("stage3"):
        return
    ctx, args = run.ctx, run.ctx.args
    score_every = args.stage3_eval_every if run.view else int(args.published_protocol == "full")
    scorer = None
    if score_every:
        def scorer(epoch: int) -> list[dict]:
            # a seed sequence of its own, so these shuffles never share a stream with a stage's
            return score_classifier_schedule(ctx, run.caches["train"], run.test_caches, seed=(args.seed, 3, epoch),
                                             calibrate=run.calibrate)
    with run.stage("stage3"):
        run.progress["stage3_scores"] = train_stage3(ctx, run.caches["train"], scorer, score_every)
    run.finish("stage3")


def run_classifiers(run: Run) -> None:
    """Synthesise unseen features, train the final GZSL and CZSL classifiers, score the test
    splits; the seen-score offset chosen on validation (if any) becomes part of the model."""
    if not run.pending("classifiers"):
        return
    selection, args = run.selection or {}, run.ctx.args
    epochs = (selection["gzsl_epochs"], selection["czsl_epochs"]) if "gzsl_epochs" in selection else None
    offset = selection["calibration"]["seen_score_offset"] if "calibration" in selection else 0.0
    with run.stage("classifiers"):
        run.progress["results"], run.progress["scores_by_epoch"] = train_and_evaluate_classifiers(
            run.ctx, run.caches["train"], run.test_caches, epochs=epochs,
            score_every_epoch=run.view or args.published_protocol == "classifier", calibrate=run.calibrate,
            seen_score_offset=offset)
        run.ctx.model.config.seen_score_offset = offset
    run.finish("classifiers")


def finish_run(run: Run) -> dict[str, Any]:
    """Keep what `add_classes` needs, then write the model, results.json, plots and card (and
    push); returns the results."""
    ctx, args = run.ctx, run.ctx.args
    # per-class statistics of the real seen features: add_classes refits without the training data
    ctx.model.record_refit_data(run.caches["train"]["features"], run.caches["train"]["labels"], args.syn_num,
                                [run.progress["results"]["classifier_epochs"][k] for k in ("gzsl", "czsl")],
                                args.classifier_lr)
    results = _results(args, run.data, run.progress, run.selection)
    if ctx.accelerator.is_main_process:
        _write_outputs(ctx, run.data, run.caches, results)
    ctx.accelerator.wait_for_everyone()
    ctx.accelerator.end_training()
    ctx.checkpoints.release()
    return results


def train_and_evaluate(
    args: SCEGGTrainingArguments, data: ZSLDataset, selection: dict[str, Any] | None = None, view: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One resumable run of all stages on `data` (the validation view with `view`); returns the
    results and the run's progress record (timings, per-epoch scores)."""
    run = start_run(args, data, selection, view)
    run_stage1(run)
    run_stage2(run)
    run_stage3(run)
    run_classifiers(run)
    return finish_run(run), run.progress


def _needs_stage2(config: SCEGGConfig) -> bool:
    """CLS_g only matters through L_EGS; the pooled baseline has no local scores to regress."""
    return bool(config.lambda_s or config.lambda_u) and config.dense_feature_source == "scen"


def published_protocol_results(args: SCEGGTrainingArguments, progress: dict) -> dict[str, Any]:
    """The published, test-selected numbers: the best classifier epoch on test after the last
    stage-3 epoch (`classifier`), or, as the published code reports them, that best after every
    stage-3 epoch and then the best stage-3 epoch, separately for CZSL and GZSL (`full`)."""
    if args.published_protocol == "classifier":
        return {"label": PUBLISHED_LABELS["classifier"], **best_epochs(progress["scores_by_epoch"])}
    per_epoch = {int(e): best_epochs(scores) for e, scores in progress["stage3_scores"].items()}
    czsl_epoch = max(per_epoch, key=lambda e: per_epoch[e]["czsl_acc"])
    gzsl_epoch = max(per_epoch, key=lambda e: per_epoch[e]["gzsl_h"])
    return {"label": PUBLISHED_LABELS["full"], "czsl_acc": per_epoch[czsl_epoch]["czsl_acc"],
            **{k: per_epoch[gzsl_epoch][k] for k in ("gzsl_unseen", "gzsl_seen", "gzsl_h")},
            "czsl_stage3_epoch": czsl_epoch, "gzsl_stage3_epoch": gzsl_epoch,
            "per_stage3_epoch": {str(e): v for e, v in sorted(per_epoch.items())}}


def _results(args: SCEGGTrainingArguments, data: ZSLDataset, progress: dict, selection: dict | None) -> dict[str, Any]:
    results = {
        "dataset": data.name,
        **progress["results"],
        "protocol": protocol_description(selection, args) if selection else PROTOCOL,
        "stage_seconds": progress["timings"],
        "stage2_fidelity": progress.get("stage2_fidelity"),
        "chance_czsl": 100.0 / len(data.semantics.unseen_class_ids),
        "seed": args.seed,
        "training_args": {k: v for k, v in dataclasses.asdict(args).items() if k not in ("push_to_hub",)},
    }
    if selection:
        results["selection"] = selection
    if selection and "calibration" in selection:
        results["calibration"] = {**selection["calibration"], "method": CALIBRATION_LABEL}
    if selection and "preset_choice" in selection:
        results["preset_choice"] = selection["preset_choice"]
    if args.published_protocol != "off":
        results["published_protocol"] = published_protocol_results(args, progress)
    return results


def _write_outputs(ctx: RunContext, data: ZSLDataset, caches, results: dict[str, Any]) -> None:
    """Final model folder with results.json and card, plots (and push) in `output_dir` (main
    process only)."""
    from ..export import attach_backbone, save_model
    from ..hub import push_model
    from ..reporting import write_plots

    out = Path(ctx.args.output_dir)
    # pictures in: an image folder's extraction backbone travels with the model, with its image processor
    image_folder = ctx.args.class_attributes_file is not None
    save_model(attach_backbone(ctx.model, ctx.args.image_backbone) if image_folder else ctx.model, out,
               results={**results, "feature_extractor": _feature_extractor(data)})
    if ctx.args.plots:
        dense = {split: (caches[split]["features"], caches[split]["labels"]) for split in ("test_seen", "test_unseen")}
        write_plots(ctx.model, data, out / "plots", history=ctx.history, dense=dense, seed=ctx.args.seed)
    if ctx.args.push_to_hub:
        push_model(out, ctx.args.hub_model_id, private=ctx.args.hub_private)


def _feature_extractor(data: ZSLDataset) -> str:
    if data.name == "synthetic":
        return f"synthetic region features (R={data.num_regions}, D={data.feature_dim}), no backbone"
    if data.feature_backbone is not None:
        return (f"the ResNet embedded in the checkpoint (weights {data.feature_backbone}), last stage map: "
                f"R={data.num_regions} regions of D={data.feature_dim}")
    return f"ResNet-101 (ImageNet), last conv map: R={data.num_regions} regions of D={data.feature_dim}"

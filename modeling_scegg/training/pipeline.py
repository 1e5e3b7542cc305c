"""The whole SC-EGG run: data -> stage 1 -> feature cache -> stage 2 -> stage 3 -> classifiers
-> saved model, results.json, plots, model card (and optionally the Hub).

After every stage a snapshot (model weights, feature cache, histories) is written atomically, so
`--resume` restarts at the first unfinished stage and, inside it, at its last step checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
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
from .arguments import SCEGGTrainingArguments, parse_key_values
from .checkpointing import STAGES, CheckpointManager
from .classifiers import best_epochs, score_classifier_schedule, train_and_evaluate_classifiers
from .common import RunContext, silence_noisy_loggers
from .selection import protocol_description, validation_view
from .stage1 import compute_dense_features, train_stage1
from .stage2 import regression_fidelity, train_stage2
from .stage3 import train_stage3

logger = get_logger(__name__)

PROTOCOL = "fixed schedule: the last epoch of every stage is reported; nothing is selected on test data"
PUBLISHED_LABEL = "published protocol: best classifier epoch selected on the TEST set (optimistic, as in the paper's code)"
_CACHE_FILE, _PROGRESS_FILE = "cache.safetensors", "progress.json"


def load_data(args: SCEGGTrainingArguments) -> ZSLDataset:
    """The run's dataset; converted once (by the main process first) and memory-mapped."""
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
    if semantics.attribute_encoder is not None:
        fixed["attribute_encoder"] = semantics.attribute_encoder
    if data.feature_backbone is not None:
        fixed["feature_backbone"] = data.feature_backbone
    clash = sorted(k for k in fixed if k in overrides and overrides[k] != fixed[k])
    if clash:
        raise ValueError(f"model overrides {clash} contradict the sizes read from dataset {data.name}")
    return SCEGGConfig(**{**overrides, **fixed})


def _tracker(args: SCEGGTrainingArguments) -> Accelerator:
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
        ctx.model.save_pretrained(folder)
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
    """Train every stage and evaluate; returns the results written to `results.json`.

    With `--selection validation` the classifier epochs are first chosen on the validation view
    of the data (its own full run under `output_dir/validation`), then the real run uses them."""
    silence_noisy_loggers()
    # An Accelerator (not a bare PartialState, which ignores ACCELERATE_USE_CPU) sets up the
    # process group that every later barrier relies on.
    with Accelerator(mixed_precision=args.mixed_precision).main_process_first():
        data = load_data(args)
    selection = None
    if args.selection == "validation":
        selection = _select_on_validation(args, data)
        args = dataclasses.replace(args, stage3_epochs=selection["stage3_epochs"])
    return _train_and_evaluate(args, data, selection=selection, score_every_epoch=args.published_protocol)[0]


def _select_on_validation(args: SCEGGTrainingArguments, data: ZSLDataset) -> dict[str, Any]:
    """Run everything on the validation view and read off the epochs to use: the classifier
    epochs, and with `--stage3_eval_every` also the stage-3 epoch count (best GZSL H)."""
    view_args = dataclasses.replace(args, output_dir=str(Path(args.output_dir) / "validation"),
                                    published_protocol=False, push_to_hub=False, plots=False)
    view = validation_view(data, args.seed)
    _, progress = _train_and_evaluate(view_args, view, score_every_epoch=True,
                                      score_stage3_every=args.stage3_eval_every)
    stage3_scores = progress.get("stage3_scores") or {}
    if stage3_scores:
        stage3_epochs = int(max(stage3_scores, key=lambda e: best_epochs(stage3_scores[e])["gzsl_h"]))
        best = best_epochs(stage3_scores[str(stage3_epochs)])
    else:
        stage3_epochs, best = args.stage3_epochs, best_epochs(progress["scores_by_epoch"])
    return {"stage3_epochs": stage3_epochs, "gzsl_epochs": best["gzsl_epoch"], "czsl_epochs": best["czsl_epoch"],
            "validation_scores": best, "validation_unseen_classes": [int(c) for c in view.semantics.unseen_class_ids],
            "stage3_epochs_scored": sorted(int(e) for e in stage3_scores)}


def _train_and_evaluate(
    args: SCEGGTrainingArguments,
    data: ZSLDataset,
    selection: dict[str, Any] | None = None,
    score_every_epoch: bool = False,
    score_stage3_every: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One resumable run of all stages on `data`; returns the results and the run's progress
    record (timings, per-epoch scores)."""
    tracker = _tracker(args)
    checkpoints = CheckpointManager(args.output_dir)
    _check_output_dir(args, checkpoints)
    set_seed(args.seed)
    config = build_config(data, args.model_config_overrides())
    finished = checkpoints.last_finished_stage() if args.resume else None
    if finished:
        model, caches, progress = _load_snapshot(checkpoints.snapshot_dir(finished), tracker.device)
        logger.info(f"resuming after {finished}", main_process_only=True)
    else:
        torch.manual_seed(args.seed)
        model = SCEGGModel(config).to(tracker.device)
        model.set_class_semantics(torch.from_numpy(data.semantics.attributes),
                                  None if data.semantics.word_vectors is None else torch.from_numpy(data.semantics.word_vectors))
        caches, progress = {}, {"timings": {}}
    tracker.init_trackers("scegg", config={k: str(v) for k, v in dataclasses.asdict(args).items()})
    ctx = RunContext(args=args, model=model, tracker=tracker, checkpoints=checkpoints,
                     history={k: [tuple(p) for p in v] for k, v in progress.get("history", {}).items()})
    timings = progress["timings"]
    done = STAGES.index(finished) + 1 if finished else 0

    if done < 1:
        with _Timer(timings, "stage1"):
            if config.dense_feature_source == "scen":
                train_stage1(ctx, RegionFeatureReader(data.splits["train"]))
            caches = {split: compute_dense_features(ctx, RegionFeatureReader(data.splits[split]), split == "train")
                      for split in ("train", "test_seen", "test_unseen")}
            _scale(model, caches)
        checkpoints.finish_stage(tracker, "stage1", _save_snapshot(ctx, caches, progress))
    if done < 2:
        with _Timer(timings, "stage2"):
            if _needs_stage2(config):
                train_stage2(ctx, caches["train"])
                progress["stage2_fidelity"] = regression_fidelity(ctx, caches["train"])
                logger.info(f"stage 2 head vs local scores on trainval: {progress['stage2_fidelity']}",
                            main_process_only=True)
        checkpoints.finish_stage(tracker, "stage2", _save_snapshot(ctx, caches, progress))
    if done < 3:
        test_caches = {s: caches[s] for s in ("test_seen", "test_unseen")}
        scorer = None
        if score_stage3_every:
            def scorer(epoch: int) -> list[dict[str, float]]:
                # a seed sequence of its own, so these shuffles never share a stream with a stage's
                return score_classifier_schedule(ctx, caches["train"], test_caches, seed=(args.seed, 3, epoch))
        with _Timer(timings, "stage3"):
            progress["stage3_scores"] = train_stage3(ctx, caches["train"], scorer, score_stage3_every)
        checkpoints.finish_stage(tracker, "stage3", _save_snapshot(ctx, caches, progress))
    if done < 4:
        epochs = (selection["gzsl_epochs"], selection["czsl_epochs"]) if selection else None
        with _Timer(timings, "classifiers"):
            progress["results"], progress["scores_by_epoch"] = train_and_evaluate_classifiers(
                ctx, caches["train"], {s: caches[s] for s in ("test_seen", "test_unseen")},
                epochs=epochs, score_every_epoch=score_every_epoch)
        checkpoints.finish_stage(tracker, "classifiers", _save_snapshot(ctx, caches, progress))
    # what add_classes needs later to refit the classifiers without the training data
    ctx.model.record_refit_data(caches["train"]["features"], caches["train"]["labels"], args.syn_num,
                                [progress["results"]["classifier_epochs"][k] for k in ("gzsl", "czsl")],
                                args.classifier_lr)

    results = _results(args, data, progress, selection)
    if tracker.is_main_process:
        _write_outputs(ctx, data, caches, results)
    tracker.wait_for_everyone()
    tracker.end_training()
    return results, progress


def _needs_stage2(config: SCEGGConfig) -> bool:
    """CLS_g only matters through L_EGS; the pooled baseline has no local scores to regress."""
    return bool(config.lambda_s or config.lambda_u) and config.dense_feature_source == "scen"


def _results(args: SCEGGTrainingArguments, data: ZSLDataset, progress: dict, selection: dict | None) -> dict[str, Any]:
    results = {
        "dataset": data.name,
        **progress["results"],
        "protocol": protocol_description(selection) if selection else PROTOCOL,
        "stage_seconds": progress["timings"],
        "stage2_fidelity": progress.get("stage2_fidelity"),
        "chance_czsl": 100.0 / len(data.semantics.unseen_class_ids),
        "seed": args.seed,
        "training_args": {k: v for k, v in dataclasses.asdict(args).items() if k not in ("push_to_hub",)},
    }
    if selection:
        results["selection"] = selection
    if args.published_protocol:
        results["published_protocol"] = {"label": PUBLISHED_LABEL, **best_epochs(progress["scores_by_epoch"])}
    return results


def _write_outputs(ctx: RunContext, data: ZSLDataset, caches, results: dict[str, Any]) -> None:
    """Final model, results.json, plots and model card in `output_dir` (main process only)."""
    from ..export import attach_backbone, save_model
    from ..hub import build_model_card, push_model
    from ..reporting import write_plots

    out = Path(ctx.args.output_dir)
    # pictures in: an image folder's extraction backbone travels with the model, with its image processor
    image_folder = ctx.args.class_attributes_file is not None
    save_model(attach_backbone(ctx.model, ctx.args.image_backbone) if image_folder else ctx.model, out)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out / "results.json")
    if ctx.args.plots:
        dense = {split: (caches[split]["features"], caches[split]["labels"]) for split in ("test_seen", "test_unseen")}
        write_plots(ctx.model, data, out / "plots", history=ctx.history, dense=dense, seed=ctx.args.seed)
    public_args = {k: v for k, v in results["training_args"].items() if k not in _LOCAL_PATHS}
    build_model_card(out, results, dataset_name=data.name, training_args=public_args,
                     feature_extractor=_feature_extractor(data), protocol="validation" if "selection" in results else "fixed")
    if ctx.args.push_to_hub:
        push_model(out, ctx.args.hub_model_id, private=ctx.args.hub_private)


_LOCAL_PATHS = ("data_dir", "cache_dir", "output_dir", "config", "class_attributes_file", "image_backbone")  # machine-specific, kept out of public cards


def _feature_extractor(data: ZSLDataset) -> str:
    if data.name == "synthetic":
        return f"synthetic region features (R={data.num_regions}, D={data.feature_dim}), no backbone"
    if data.feature_backbone is not None:
        return (f"the ResNet embedded in the checkpoint (weights {data.feature_backbone}), last stage map: "
                f"R={data.num_regions} regions of D={data.feature_dim}")
    return f"ResNet-101 (ImageNet), last conv map: R={data.num_regions} regions of D={data.feature_dim}"

"""What a finished run leaves: results.json (its keys are what users and the model card read),
the model folder, plots, and optionally the Hub copy."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..data import ZSLDataset
from .arguments import SCEGGTrainingArguments
from .classifiers import best_epochs
from .common import RunContext
from .selection import protocol_description
from .state import EpochScores, FeatureCache, Progress, Scores, ValidationChoice

PROTOCOL = "fixed schedule: the last epoch of every stage is reported; nothing is selected on test data"
PUBLISHED_LABELS = {
    "classifier": "published protocol, classifier level: best classifier epoch selected on the TEST set after the last "
                  "stage-3 epoch (optimistic)",
    "full": "published protocol: classifiers trained and scored on the TEST set after every stage-3 epoch, best classifier "
            "epoch of each, then the best stage-3 epoch, for CZSL and GZSL separately (as the paper's code reports; optimistic)",
}
CALIBRATION_LABEL = ("calibrated stacking (Chao et al., ECCV 2016): a constant subtracted from the seen classes' GZSL "
                     "scores, chosen on the validation view (val classes as pseudo-unseen), never on test")


def published_protocol_results(args: SCEGGTrainingArguments, scores: EpochScores) -> dict[str, Any]:
    """The published, test-selected numbers: the best classifier epoch on test after the last
    stage-3 epoch (`classifier`), or, as the published code reports them, that best after every
    stage-3 epoch and then the best stage-3 epoch, separately for CZSL and GZSL (`full`)."""
    if args.published_protocol == "classifier":
        return {"label": PUBLISHED_LABELS["classifier"], **best_epochs(scores.by_classifier_epoch)}
    per_epoch = {e: best_epochs(by_epoch) for e, by_epoch in scores.by_stage3_epoch.items()}
    czsl_epoch = max(per_epoch, key=lambda e: per_epoch[e]["czsl_acc"])
    gzsl_epoch = max(per_epoch, key=lambda e: per_epoch[e]["gzsl_h"])
    return {"label": PUBLISHED_LABELS["full"], "czsl_acc": per_epoch[czsl_epoch]["czsl_acc"],
            **{k: per_epoch[gzsl_epoch][k] for k in ("gzsl_unseen", "gzsl_seen", "gzsl_h")},
            "czsl_stage3_epoch": czsl_epoch, "gzsl_stage3_epoch": gzsl_epoch,
            "per_stage3_epoch": {str(e): v for e, v in sorted(per_epoch.items())}}


def run_results(args: SCEGGTrainingArguments, data: ZSLDataset, progress: Progress,
                choice: ValidationChoice | None) -> Scores:
    """The content of results.json."""
    results = {
        "dataset": data.name,
        **progress.results,
        "protocol": protocol_description(choice, args) if choice else PROTOCOL,
        "stage_seconds": progress.timings,
        "stage2_fidelity": progress.stage2_fidelity,
        "chance_czsl": 100.0 / len(data.semantics.unseen_class_ids),
        "seed": args.seed,
        "training_args": {k: v for k, v in dataclasses.asdict(args).items() if k not in ("push_to_hub",)},
    }
    if choice:
        results["selection"] = choice.to_json()
    if choice and choice.calibration:
        results["calibration"] = {**choice.calibration.to_json(), "method": CALIBRATION_LABEL}
    if choice and choice.preset_choice:
        results["preset_choice"] = choice.preset_choice
    if args.published_protocol != "off":
        results["published_protocol"] = published_protocol_results(args, progress.scores)
    return results


def write_outputs(ctx: RunContext, data: ZSLDataset, cache: FeatureCache, results: Scores) -> None:
    """Final model folder with results.json and card, plots (and push) in `output_dir` (main
    process only)."""
    from ..data.images import image_options_processor, parse_image_options
    from ..export import attach_backbone, save_model
    from ..hub import push_model
    from ..reporting import write_plots

    out = Path(ctx.args.output_dir)
    # pictures in: an image folder's extraction backbone travels with the model, with its image processor
    image_folder = ctx.args.class_attributes_file is not None
    processor = image_options_processor(parse_image_options(ctx.args.image_options)) if image_folder else None
    save_model(attach_backbone(ctx.model, ctx.args.image_backbone, processor) if image_folder else ctx.model, out,
               processor, results={**results, "feature_extractor": _feature_extractor(data)})
    if ctx.args.plots:
        dense = {split: (cache.splits()[split].features, cache.splits()[split].labels)
                 for split in ("test_seen", "test_unseen")}
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

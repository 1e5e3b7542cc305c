"""The `scegg` command: train, predict, attach a backbone, add classes, evaluate, plot, convert data,
push models and feature datasets.

`scegg train ...` takes exactly the flags of `examples/train_stages.py` (run it under
`accelerate launch` for several processes).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence


def configure_logging() -> None:
    """Stage times, the chosen preset and the calibration at INFO; library chatter at WARNING."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("modeling_scegg").setLevel(logging.INFO)


def _train(argv: Sequence[str]) -> int:
    from .training import parse_training_args, run_pipeline

    configure_logging()
    results = run_pipeline(parse_training_args(list(argv)))
    print(format_results(results))
    return 0


def format_results(results: dict) -> str:
    """A small table of the honest numbers (and the test-selected ones, labelled, if present)."""
    rows = [("CZSL Acc", results["czsl_acc"]), ("GZSL U", results["gzsl_unseen"]),
            ("GZSL S", results["gzsl_seen"]), ("GZSL H", results["gzsl_h"])]
    lines = [f"SC-EGG on {results['dataset']} ({results['protocol']})", f"{'metric':<10}{'%':>8}"]
    lines += [f"{name:<10}{value:>8.2f}" for name, value in rows]
    lines.append(f"{'chance':<10}{results['chance_czsl']:>8.2f}  (CZSL, 1/Cu)")
    if "gzsl_seen_only" in results:  # which side a GZSL collapse comes from
        lines.append(f"GZSL classifier restricted to one side: seen-only {results['gzsl_seen_only']:.2f} on test_seen, "
                     f"unseen-only {results['gzsl_unseen_only']:.2f} on test_unseen; seen images called unseen "
                     f"{results['gzsl_seen_as_unseen']:.2f}%, unseen called seen {results['gzsl_unseen_as_seen']:.2f}%")
    if "preset_choice" in results:
        choice = results["preset_choice"]
        lines.append(f"preset {choice['chosen']}, chosen on validation H among " + ", ".join(
            f"{name} {scores['gzsl_h']:.2f}" for name, scores in choice["candidates"].items()))
    if "uncalibrated" in results:
        raw = results["uncalibrated"]
        lines.append(f"GZSL above with calibrated stacking (seen-score offset "
                     f"{results['calibration']['seen_score_offset']:.4g}, chosen on validation); uncalibrated: "
                     f"U {raw['gzsl_unseen']:.2f}, S {raw['gzsl_seen']:.2f}, H {raw['gzsl_h']:.2f}")
    if "published_protocol" in results:
        pub = results["published_protocol"]
        lines.append(f"{pub['label']}: Acc {pub['czsl_acc']:.2f}, U {pub['gzsl_unseen']:.2f}, "
                     f"S {pub['gzsl_seen']:.2f}, H {pub['gzsl_h']:.2f}")
    lines.append("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in results["stage_seconds"].items()))
    return "\n".join(lines)


def _predict(args: argparse.Namespace) -> int:
    import itertools

    import torch

    from .hub import load_image_processor, load_model
    from .prediction import (
        FEATURE_SUFFIXES,
        expand_inputs,
        predict_images,
        predict_region_features,
        write_predictions,
    )

    model = load_model(args.model, for_images=True).eval()
    files = expand_inputs(args.inputs)
    features = [f for f in files if f.suffix.lower() in FEATURE_SUFFIXES]
    images = [f for f in files if f.suffix.lower() not in FEATURE_SUFFIXES]
    processor = load_image_processor(args.model) if images else None
    if images:
        model = _with_backbone(model, args, processor)
    if torch.cuda.is_available():
        model = model.cuda()
    options = dict(czsl=args.czsl, top_k=args.top_k, batch_size=args.batch_size)
    rows = itertools.chain(*(predict_region_features(model, f, **options) for f in features),
                           predict_images(model, processor, images, **options) if images else ())
    errors = write_predictions(rows, args.output, args.top_k)
    print(f"{len(features)} feature files and {len(images)} pictures: {errors} rows failed", file=sys.stderr)
    return 1 if errors else 0


def _with_backbone(model, args: argparse.Namespace, processor):
    """The model's own backbone, or the explicitly given one; never a silent random network."""
    from .export import attach_backbone

    if model.backbone is not None:
        if args.image_backbone:
            raise ValueError(f"{args.model} carries its own backbone ({model.config.feature_backbone}); drop --image_backbone")
        return model
    if not args.image_backbone:
        raise ValueError(
            f"{args.model} has no region backbone, so it cannot read pictures: pass --image_backbone WEIGHTS (the "
            f"backbone its region features came from; 'random' for tests), or embed it once with "
            f"`scegg attach-backbone {args.model} WEIGHTS --output DIR`"
        )
    return attach_backbone(model, args.image_backbone, processor)


def _attach_backbone(args: argparse.Namespace) -> int:
    from .export import attach_backbone, save_model
    from .hub import load_model

    processor = _image_processor(args.crop_size, args.resize_size)
    image_model = attach_backbone(load_model(args.model), args.weights, processor)
    save_model(image_model, args.output, processor)
    print(f"wrote {args.output}: backbone {image_model.config.feature_backbone}, "
          f"{processor.crop_size.height} x {processor.crop_size.width} crops -> {image_model.config.num_regions} regions")
    return 0


def _add_classes(args: argparse.Namespace) -> int:
    import torch

    from .data.new_classes import read_new_classes
    from .export import save_model
    from .hub import load_image_processor, load_model

    model = load_model(args.model, for_images=True).eval()
    names, attributes = read_new_classes(args.classes, model.config.num_attributes)
    new_ids = model.add_classes(names, torch.from_numpy(attributes), generator=torch.Generator().manual_seed(args.seed))
    save_model(model, args.output, load_image_processor(args.model))
    print(f"wrote {args.output}: {len(new_ids)} new unseen classes "
          + ", ".join(f"{i} {name}" for i, name in zip(new_ids, names))
          + f"; {model.config.num_classes} classes, {model.config.num_unseen_classes} unseen")
    return 0


def _image_processor(crop_size: int, resize_size: int | None):
    from .image_processing_scegg import SCEGGImageProcessor

    return SCEGGImageProcessor(size={"shortest_edge": resize_size or crop_size},
                               crop_size={"height": crop_size, "width": crop_size})


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from .data import load_zsl_dataset
    from .evaluation import evaluate_model
    from .hub import load_model

    model = load_model(args.model)
    if torch.cuda.is_available():
        model = model.cuda()
    data = load_zsl_dataset(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir)
    print(json.dumps({"dataset": data.name, **evaluate_model(model, data, args.batch_size)}, indent=2))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .data import load_zsl_dataset
    from .hub import load_model
    from .reporting import write_plots

    model = load_model(args.model)
    data = load_zsl_dataset(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir)
    for path in write_plots(model, data, args.output, seed=args.seed, num_attention_images=args.attention_images):
        print(path)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .data import load_zsl_dataset

    data = load_zsl_dataset(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir)
    print(f"{data.name}: " + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
          + f"; R={data.num_regions}, D={data.feature_dim}, A={data.semantics.num_attributes}")
    if args.hub_layout:
        from .data import save_zsl_dataset_to_hub_layout

        save_zsl_dataset_to_hub_layout(data, args.hub_layout)
        print(f"wrote the Hub layout to {args.hub_layout}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push_model

    print(push_model(args.output_dir, args.repo_id, private=args.private))
    return 0


def _push_dataset(args: argparse.Namespace) -> int:
    from .hub import push_feature_dataset

    print(push_feature_dataset(args.folder, args.repo_id, private=args.private))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scegg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train all stages (flags: see `scegg train --help`)", add_help=False)
    predict = sub.add_parser("predict", help="class names for pictures (or region features) with a trained model; "
                                             "exit status 1 when any input failed")
    predict.add_argument("model", help="output folder or Hub id")
    predict.add_argument("inputs", nargs="+", help="pictures, folders of pictures, or .npy / .safetensors files "
                                                   "of region features (B, R, D)")
    predict.add_argument("--top_k", type=int, default=5)
    predict.add_argument("--czsl", action="store_true", help="rank the unseen classes only (CZSL); default: all (GZSL)")
    predict.add_argument("--output", help="write the rows to a .csv or .jsonl file (default: JSON lines on stdout)")
    predict.add_argument("--batch_size", type=int, default=16)
    predict.add_argument("--image_backbone", help="for a model without backbone: the ResNet its features came from "
                                                  "(weights file, transformers folder / Hub id, or 'random' for tests)")
    attach = sub.add_parser("attach-backbone", help="embed the ResNet region backbone in a model trained on region features")
    attach.add_argument("model", help="output folder or Hub id")
    attach.add_argument("weights", help="torchvision ResNet-101 file, transformers ResNet folder / Hub id, or 'random' (tests)")
    attach.add_argument("--output", required=True, help="folder to write the model with its backbone to")
    attach.add_argument("--crop_size", type=int, default=448, help="crop the region features were extracted at")
    attach.add_argument("--resize_size", type=int, help="short side before cropping (default: the crop size)")
    add = sub.add_parser("add-classes", help="add unseen classes from their attributes: synthesise their features, "
                                             "refit the final classifiers (SCEN and EGGN unchanged)")
    add.add_argument("model", help="output folder or Hub id")
    add.add_argument("classes", help="CSV: class_name,<the model's attribute columns> (one row per new class)")
    add.add_argument("--output", required=True, help="folder to write the model with the new classes to")
    add.add_argument("--seed", type=int, default=0, help="seed of the synthetic features and the refit")
    evaluate = sub.add_parser("evaluate", help="score a trained model on a dataset's test splits")
    evaluate.add_argument("model", help="output folder or Hub id")
    evaluate.add_argument("dataset", help="synthetic, CUB, SUN, AWA2, a dataset folder or Hub id")
    evaluate.add_argument("--data_dir")
    evaluate.add_argument("--cache_dir")
    evaluate.add_argument("--batch_size", type=int, default=256)
    plot = sub.add_parser("plot", help="t-SNE of real vs synthetic features and attention maps as PNGs")
    plot.add_argument("model", help="output folder or Hub id")
    plot.add_argument("dataset", help="the dataset the model was trained on")
    plot.add_argument("--output", default="plots")
    plot.add_argument("--data_dir")
    plot.add_argument("--cache_dir")
    plot.add_argument("--seed", type=int, default=0)
    plot.add_argument("--attention_images", type=int, default=4)
    convert = sub.add_parser("convert", help="convert a dataset to the memory-mapped Arrow cache")
    convert.add_argument("dataset")
    convert.add_argument("--data_dir")
    convert.add_argument("--cache_dir")
    convert.add_argument("--hub_layout", help="also write the features/classes/attributes Parquet layout here")
    push = sub.add_parser("push", help="push a trained output folder to the Hub")
    push.add_argument("output_dir")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push_ds = sub.add_parser("push-dataset", help="push a dataset folder in the Hub layout")
    push_ds.add_argument("folder")
    push_ds.add_argument("repo_id")
    push_ds.add_argument("--private", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    handlers = {"predict": _predict, "attach-backbone": _attach_backbone, "add-classes": _add_classes, "evaluate": _evaluate,
                "plot": _plot, "convert": _convert, "push": _push, "push-dataset": _push_dataset}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

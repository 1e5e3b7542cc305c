"""The `scegg` command: train, predict, attach a backbone, add classes, evaluate, plot, convert data,
extract benchmark region features, push models and feature datasets.

`scegg train ...` takes exactly the flags of `examples/train_stages.py` (run it under
`accelerate launch` for several processes).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import EXIT_ERROR, EXIT_OK, UserError
from .openmp import configure_openmp
from .presets import shipped_presets


def configure_logging() -> None:
    """Stage times, the chosen preset and the calibration at INFO; library chatter at WARNING."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("modeling_scegg").setLevel(logging.INFO)


def _train(argv: Sequence[str]) -> int:
    from .training import parse_training_args, run_pipeline

    configure_logging()
    results = run_pipeline(parse_training_args(training_argv(argv)))
    print(format_results(results))
    return EXIT_OK


def training_argv(argv: Sequence[str]) -> list[str]:
    """`scegg train ARGS.json` as transformers' example scripts read one (HfArgumentParser's
    parse_json_file: the file's keys are the flags' names), turned into flags so that presets and
    their defaults apply exactly as on the command line."""
    argv = list(argv)
    if len(argv) != 1 or not argv[0].endswith(".json"):
        return argv
    path = Path(argv[0])
    if not path.is_file():
        raise UserError(f"no such arguments file: {path}", "pass a JSON file of training flags, e.g. {\"seed\": 1}")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error}", "write the flags as one JSON object") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} holds a JSON {type(values).__name__}, not an object",
                        'write the flags as one JSON object, e.g. {"dataset": "CUB", "seed": 1}')
    flags: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(json.dumps(v) if isinstance(v, bool) else str(v) for v in items)]
    return flags


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
    import torch

    from .hub import load_image_processor, load_model
    from .prediction import FEATURE_SUFFIXES, check_options, expand_inputs, predict_inputs, write_predictions

    check_options(args.top_k, args.batch_size, args.output, args.attributes, args.attention_maps)
    files = expand_inputs(args.inputs)
    model = load_model(args.model, for_images=True).eval()
    images = [f for f in files if f.suffix.lower() not in FEATURE_SUFFIXES]
    processor = load_image_processor(args.model) if images else None
    if images:
        model = _with_backbone(model, args, processor)
    if torch.cuda.is_available():
        model = model.cuda()
    rows = predict_inputs(model, processor, files, czsl=args.czsl, top_k=args.top_k, batch_size=args.batch_size,
                          attributes=args.attributes, attention_maps=args.attention_maps)
    return write_predictions(rows, args.output, args.top_k, args.attributes)


def _with_backbone(model, args: argparse.Namespace, processor):
    """The model's own backbone, or the explicitly given one; never a silent random network."""
    from .export import attach_backbone

    if model.backbone is not None:
        if args.image_backbone:
            raise UserError(f"{args.model} carries its own backbone ({model.config.feature_backbone})",
                            "drop --image_backbone")
        return model
    if not args.image_backbone:
        raise UserError(
            f"{args.model} has no region backbone, so it cannot read pictures",
            f"pass --image_backbone WEIGHTS (the backbone its region features came from; 'random' for tests), or "
            f"embed it once with `scegg attach-backbone {args.model} WEIGHTS --output DIR`"
        )
    return attach_backbone(model, args.image_backbone, processor)


def _attach_backbone(args: argparse.Namespace) -> int:
    from .data.backbone import image_processor
    from .export import attach_backbone, save_model
    from .hub import load_model

    processor = image_processor(args.crop_size, args.resize_size)
    image_model = attach_backbone(load_model(args.model), args.weights, processor)
    save_model(image_model, args.output, processor)
    print(f"wrote {args.output}: backbone {image_model.config.feature_backbone}, "
          f"{processor.crop_size.height} x {processor.crop_size.width} crops -> {image_model.config.num_regions} regions")
    return EXIT_OK


def _add_classes(args: argparse.Namespace) -> int:
    import torch

    from .data.new_classes import read_new_classes
    from .export import save_model
    from .hub import load_model

    model = load_model(args.model, for_images=True).eval()
    names, attributes = read_new_classes(args.classes, model.config.num_attributes)
    new_ids = model.add_classes(names, torch.from_numpy(attributes), generator=torch.Generator().manual_seed(args.seed))
    save_model(model, args.output)  # with the image processor of the folder the model was loaded from
    print(f"wrote {args.output}: {len(new_ids)} new unseen classes "
          + ", ".join(f"{i} {name}" for i, name in zip(new_ids, names))
          + f"; {model.config.num_classes} classes, {model.config.num_unseen_classes} unseen")
    return EXIT_OK


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
    return EXIT_OK


def _plot(args: argparse.Namespace) -> int:
    from .data import load_zsl_dataset
    from .hub import load_model
    from .reporting import write_plots

    model = load_model(args.model)
    data = load_zsl_dataset(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir)
    for path in write_plots(model, data, args.output, seed=args.seed, num_attention_images=args.attention_images):
        print(path)
    return EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    from .data import load_zsl_dataset

    data = load_zsl_dataset(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir)
    print(f"{data.name}: " + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
          + f"; R={data.num_regions}, D={data.feature_dim}, A={data.semantics.num_attributes}")
    if args.hub_layout:
        from .data import save_zsl_dataset_to_hub_layout

        save_zsl_dataset_to_hub_layout(data, args.hub_layout)
        print(f"wrote the Hub layout to {args.hub_layout}")
    return EXIT_OK


def _extract(args: argparse.Namespace) -> int:
    from .data.extraction import extract_region_features

    configure_logging()
    path = extract_region_features(
        args.dataset, args.image_dir, args.data_dir, args.backbone, crop_size=args.crop_size,
        resize_size=args.resize_size, batch_size=args.batch_size, chunk_size=args.chunk_size,
        num_workers=args.num_workers, device=args.device, autocast=None if args.autocast == "no" else args.autocast)
    print(f"wrote {path}: train with `scegg train --dataset {args.dataset} --data_dir {args.data_dir}`")
    return EXIT_OK


def _push(args: argparse.Namespace) -> int:
    from .hub import push_model

    print(push_model(args.output_dir, args.repo_id, private=args.private))
    return EXIT_OK


def _push_dataset(args: argparse.Namespace) -> int:
    from .hub import push_feature_dataset

    print(push_feature_dataset(args.folder, args.repo_id, private=args.private))
    return EXIT_OK


def _epilog() -> str:
    return (f"shipped presets (scegg train --config NAME): {', '.join(shipped_presets())}. "
            "Flags take - and _ alike (--top-k, --top_k). A mistake exits with status 2 and two lines, "
            "the cause and the remedy; --verbose adds the traceback.")


def _option(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """`--name` and its spelling with - instead of _, as transformers' HfArgumentParser does for train."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*flags, **kwargs)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every default shown, except where there is none to show (None, a switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _subparser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text, epilog=_epilog(),
                            formatter_class=_HelpFormatter)
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error (default: two lines, cause and remedy)")
    return parser


def _add_predict(sub) -> None:
    predict = _subparser(sub, "predict", "class names for pictures (or region features) with a trained model; exit "
                                         "status 1 when some inputs failed, 2 when the run could not start or died")
    predict.add_argument("model", help="model folder or Hub id (ORG/NAME)")
    predict.add_argument("inputs", nargs="+", help="pictures, folders of pictures, or .npy / .safetensors files "
                                                   "of region features (B, R, D)")
    _option(predict, "top_k", type=_positive_int, default=5, help="classes per input")
    predict.add_argument("--czsl", action="store_true", help="rank the unseen classes only (CZSL); default: all (GZSL)")
    predict.add_argument("--output", help="write the rows to a .csv or .jsonl file (default: JSON lines on stdout)")
    _option(predict, "batch_size", type=_positive_int, default=16, help="inputs per forward pass")
    _option(predict, "attributes", type=int, default=0, metavar="K",
            help="explain: the K attributes seen most strongly, per class the K supporting and K contradicting ones "
                 "(more CSV columns / JSON keys; 0: no explanation)")
    _option(predict, "attention_maps", metavar="DIR",
            help="with --attributes K, pictures only: their attention maps of those K attributes, overlaid on them, "
                 "as DIR/<picture>.<attribute>.png")
    _option(predict, "image_backbone", help="for a model without backbone: the ResNet its features came from "
                                            "(weights file, checkpoint folder, Hub id e.g. timm/resnet101.tv_in1k, "
                                            "or 'random' for tests)")


def _add_model_editing(sub) -> None:
    attach = _subparser(sub, "attach-backbone", "embed the ResNet region backbone in a model trained on region features")
    attach.add_argument("model", help="model folder or Hub id (ORG/NAME)")
    attach.add_argument("weights", help="torchvision ResNet-101 file, checkpoint folder, Hub id "
                                        "(e.g. timm/resnet101.tv_in1k), or 'random' (tests)")
    attach.add_argument("--output", required=True, help="folder to write the model with its backbone to")
    _option(attach, "crop_size", type=_positive_int, default=448, help="crop the region features were extracted at")
    _option(attach, "resize_size", type=_positive_int, help="short side before cropping (default: the crop size)")
    add = _subparser(sub, "add-classes", "add unseen classes from their attributes: synthesise their features, refit "
                                         "the final classifiers (SCEN and EGGN unchanged)")
    add.add_argument("model", help="model folder or Hub id (ORG/NAME)")
    add.add_argument("classes", help="CSV: class_name,<the model's attribute columns> (one row per new class)")
    add.add_argument("--output", required=True, help="folder to write the model with the new classes to")
    add.add_argument("--seed", type=int, default=0, help="seed of the synthetic features and the refit")


def _add_data_commands(sub) -> None:
    evaluate = _subparser(sub, "evaluate", "score a trained model on a dataset's test splits")
    evaluate.add_argument("model", help="model folder or Hub id (ORG/NAME)")
    evaluate.add_argument("dataset", help="synthetic, CUB, SUN, AWA2, a dataset folder or Hub id")
    _option(evaluate, "data_dir", help="root of the standard ZSL layout (xlsa17/, <DS>/, w2v/)")
    _option(evaluate, "cache_dir", help="where converted features are kept (default: the datasets cache)")
    _option(evaluate, "batch_size", type=_positive_int, default=256, help="region features per forward pass")
    plot = _subparser(sub, "plot", "t-SNE of real vs synthetic features and attention maps as PNGs (needs scegg[plots])")
    plot.add_argument("model", help="model folder or Hub id (ORG/NAME)")
    plot.add_argument("dataset", help="the dataset the model was trained on")
    plot.add_argument("--output", default="plots", help="folder for the PNGs")
    _option(plot, "data_dir", help="root of the standard ZSL layout")
    _option(plot, "cache_dir", help="where converted features are kept (default: the datasets cache)")
    plot.add_argument("--seed", type=int, default=0, help="seed of the synthetic features and of t-SNE")
    _option(plot, "attention_images", type=int, default=4, help="test images whose attention maps are drawn")
    convert = _subparser(sub, "convert", "convert a dataset to the memory-mapped Arrow cache")
    convert.add_argument("dataset", help="synthetic, CUB, SUN, AWA2, a dataset folder or Hub id")
    _option(convert, "data_dir", help="root of the standard ZSL layout")
    _option(convert, "cache_dir", help="where converted features are kept (default: the datasets cache)")
    _option(convert, "hub_layout", help="also write the features/classes/attributes Parquet layout here")


def _add_sharing(sub) -> None:
    push = _subparser(sub, "push", "push a model folder (training output, attach-backbone, add-classes) to the Hub")
    push.add_argument("output_dir", help="the model folder")
    push.add_argument("repo_id", help="ORG/NAME")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push_ds = _subparser(sub, "push-dataset", "push a dataset folder in the Hub layout")
    push_ds.add_argument("folder", help="a folder written by `scegg convert --hub_layout`")
    push_ds.add_argument("repo_id", help="ORG/NAME")
    push_ds.add_argument("--private", action="store_true", help="create the repo private")


def _add_extract(sub) -> None:
    extract = _subparser(sub, "extract", "ResNet-101 region features of a benchmark's pictures into "
                                         "DATA_DIR/<DS>/feature_map_ResNet_101_<DS>.hdf5 (resumable; needs scegg[hdf5])")
    extract.add_argument("dataset", help="CUB, SUN or AWA2 (or another xlsa17 dataset whose res101.mat lists pictures)")
    extract.add_argument("image_dir", help="the unpacked public pictures (CUB: the folder holding CUB_200_2011/, "
                                           "SUN: holding images/, AWA2: holding Animals_with_Attributes2/)")
    _option(extract, "data_dir", required=True, help="the folder holding xlsa17/ (and w2v/); the file goes to <DS>/")
    _option(extract, "backbone", required=True,
            help="ResNet-101 weights: a torchvision file (resnet101-63fe2227.pth, the paper's), a checkpoint "
                 "folder or a Hub id (timm/resnet101.tv_in1k: the same weights; microsoft/resnet-101)")
    _option(extract, "crop_size", type=_positive_int, default=448, help="448: 14 x 14 regions (the paper's); 224: 7 x 7")
    _option(extract, "resize_size", type=_positive_int, help="short side before cropping (default: the crop size)")
    _option(extract, "batch_size", type=_positive_int, default=32, help="pictures per forward pass")
    _option(extract, "chunk_size", type=_positive_int, default=512, help="pictures per resumable shard")
    _option(extract, "num_workers", type=int, default=min(4, os.cpu_count() or 1),
            help="DataLoader processes decoding pictures (up to 4, at most the CPU count)")
    _option(extract, "device", help="default: cuda when available, else cpu")
    _option(extract, "autocast", choices=("auto", "bf16", "fp16", "no"), default="auto",
            help="auto: bf16 where the device runs it natively (CUDA >= 8.0, AVX-512 BF16 / AMX CPUs)")



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scegg", description=__doc__, epilog=_epilog(),
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"scegg {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train all stages; `scegg train ARGS.json` reads the flags from a JSON file "
                                 "(flags: see `scegg train --help`)", add_help=False)
    _add_predict(sub)
    _add_model_editing(sub)
    _add_data_commands(sub)
    _add_extract(sub)
    _add_sharing(sub)
    return parser


HANDLERS = {"predict": _predict, "attach-backbone": _attach_backbone, "add-classes": _add_classes, "evaluate": _evaluate,
            "plot": _plot, "convert": _convert, "extract": _extract, "push": _push, "push-dataset": _push_dataset}


def scegg_verbose(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether scegg's own --verbose was given, and the arguments for the command's parser. Only
    `train`'s flags (HfArgumentParser's, of which --verbose is none) lose it; every other parser
    takes it itself. After `--` an argument is data (a file named --verbose), never the flag."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    head = [arg for arg in argv[:end] if arg != "--verbose"]
    verbose = len(head) < end
    if next((arg for arg in head if not arg.startswith("-")), None) == "train":
        return verbose, head + argv[end:]
    return verbose, argv


def run(argv: Sequence[str]) -> int:
    """The command `argv` names, raising what goes wrong (main() turns that into exit statuses)."""
    _, argv = scegg_verbose(argv)
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    return HANDLERS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """`scegg ...`: the command's exit status; a user's mistake prints its cause and remedy and
    exits 2, anything else that stops a run exits 2 too, with the traceback under --verbose."""
    configure_openmp()  # before any subcommand imports torch (libgomp reads it once)
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose, _ = scegg_verbose(argv)
    try:
        return run(argv)
    except UserError as error:
        if verbose:
            traceback.print_exc()
        print(f"error: {error.cause}", file=sys.stderr)
        print(f"remedy: {error.remedy or 'see scegg --help'}", file=sys.stderr)
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - every failure gets an exit status and a line
        if verbose:
            traceback.print_exc()
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        print("remedy: fix the cause above, or rerun with --verbose for the traceback (a bug if the cause is not yours)",
              file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

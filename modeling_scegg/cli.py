"""The `scegg` command: train, evaluate, predict, plot, convert data, push models and feature datasets.

`scegg train ...` takes exactly the flags of `examples/train_stages.py` (run it under
`accelerate launch` for several processes).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence


def _train(argv: Sequence[str]) -> int:
    from .training import parse_training_args, run_pipeline

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("modeling_scegg").setLevel(logging.INFO)

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
    import numpy as np
    import torch

    from .hub import load_model

    model = load_model(args.model).eval()
    features = _read_features(args.features)
    with torch.no_grad():
        output = model(torch.from_numpy(features).float())
    logits = output.czsl_logits if args.czsl else output.logits
    ids = model.config.unseen_class_ids if args.czsl else list(range(model.config.num_classes))
    top = torch.topk(logits, k=min(args.top_k, logits.shape[-1]), dim=-1)
    for row, (scores, positions) in enumerate(zip(top.values, top.indices)):
        names = [model.config.id2label[ids[int(p)]] for p in positions]
        print(json.dumps({"image": row, "classes": names, "scores": [round(float(s), 4) for s in scores]}))
    return 0 if np.isfinite(logits.numpy()).all() else 1


def _read_features(path: str):
    """Region features (B, R, D) from .npy (no pickles) or .safetensors (tensor 'region_features')."""
    import numpy as np

    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        tensors = load_file(path)
        if "region_features" not in tensors:
            raise KeyError(f"{path} has no tensor 'region_features' (found {sorted(tensors)})")
        return tensors["region_features"]
    return np.load(path, allow_pickle=False)


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
    predict = sub.add_parser("predict", help="classify region features with a trained model")
    predict.add_argument("model", help="output folder or Hub id")
    predict.add_argument("features", help=".npy or .safetensors file with region features (B, R, D)")
    predict.add_argument("--top_k", type=int, default=5)
    predict.add_argument("--czsl", action="store_true", help="predict among unseen classes only")
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
    handlers = {"predict": _predict, "evaluate": _evaluate, "plot": _plot, "convert": _convert, "push": _push, "push-dataset": _push_dataset}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

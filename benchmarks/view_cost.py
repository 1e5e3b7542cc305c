"""What the validation view costs, and whether a cheaper one chooses the same: per benchmark
layout and seed, the default run's choices on validation (the preset among the dataset's
candidates, and the calibrated-stacking offset) made with the view's full schedule and with
shorter ones (`--view_schedule`), then the real run of the chosen preset, scored on test with
each view's offset.

    python benchmarks/view_cost.py --datasets AWA2 CUB SUN --seeds 0 1 2 --shares 1.0 0.25 \
        --render class_appearance=0.3 class_signature=0.3 --output_dir outputs/view_cost

Per layout, seed and view share it prints: the seconds of the choice (every candidate's view
run) and their share of the real run's seconds, the chosen preset, the chosen offset, the
validation H (calibrated) and the test H of the real run calibrated with that offset. The test
splits are only read to score the real run with the offset each view chose.

`--matched_share` also runs, for the chosen preset at the last listed schedule, a view whose
pseudo-unseen classes are a random subset of the val classes sized so that their share of the
view's classes equals the real unseen share (AWA2: 7 of 13 val classes against 27 train_sub
classes, as 10 unseen against 40 seen); the other val classes are left out of that view
entirely (never trained on). It prints that view's offset and the test H it gives.

Only with `--test_selected_ceiling` (off by default) does it also read the test scores to find
the offset that would be best on TEST and its H, labelled as a ceiling no protocol may use, and
the median gap between the best seen and the best unseen score of seen and of unseen images, on
the view and on test: what the offset has to cancel on each. Finished steps are reused
(`view_cost.json` in `--output_dir`, written after every step).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modeling_scegg import SCEGGModel  # noqa: E402
from modeling_scegg.data import ZSLDataset  # noqa: E402
from modeling_scegg.data.synthetic import SyntheticConfig  # noqa: E402
from modeling_scegg.data.synthetic_layout import write_synthetic_benchmark  # noqa: E402
from modeling_scegg.evaluation import choose_seen_score_offset, mean_per_class_accuracy  # noqa: E402
from modeling_scegg.evaluation.calibration import calibrated_predictions  # noqa: E402
from modeling_scegg.evaluation.metric import harmonic_mean  # noqa: E402
from modeling_scegg.training import choose_on_validation, load_data, parse_training_args, train_and_evaluate  # noqa: E402
from modeling_scegg.training.arguments import parse_key_values  # noqa: E402
from modeling_scegg.training.classifiers import best_epochs  # noqa: E402
from modeling_scegg.training.preset_choice import candidate_args  # noqa: E402
from modeling_scegg.training.selection import validation_view, view_arguments  # noqa: E402

DEFAULT_METADATA = REPO.parent / "shared" / "data"
WIDTHS = ["encoder_hidden_dim=256", "generator_hidden_dim=256", "critic_hidden_dim=256", "decoder_hidden_dim=256",
          "regression_hidden_dim=256"]
# per layout: share of its images kept, stage-3 epochs (~150-300 batches per feedback loop)
LAYOUTS = {"AWA2": (0.15, 2), "CUB": (0.3, 6), "SUN": (0.4, 4)}


def layout_data(args: argparse.Namespace, dataset: str) -> Path:
    """The synthetic layout, written once per rendering and size."""
    render = parse_key_values(args.render, "--render")
    fraction = LAYOUTS[dataset][0]
    tag = hashlib.sha256(json.dumps([dataset, args.grid, args.feature_dim, fraction, render], sort_keys=True).encode())
    data_dir = Path(args.output_dir) / "data" / tag.hexdigest()[:8]
    if not (data_dir / dataset / f"feature_map_ResNet_101_{dataset}.hdf5").is_file():
        write_synthetic_benchmark(dataset, args.metadata_dir, data_dir, grid=(args.grid, args.grid),
                                  feature_dim=args.feature_dim, render=SyntheticConfig(**render), fraction=fraction)
    return data_dir


def run_argv(args: argparse.Namespace, dataset: str, data_dir: Path, seed: int, out: Path) -> list[str]:
    """A default run (no --config: the preset is chosen on validation) at the benchmark schedule."""
    return ["--dataset", dataset, "--data_dir", str(data_dir), "--cache_dir", str(Path(args.output_dir) / "cache"),
            "--output_dir", str(out), "--seed", str(seed), "--plots", "false", "--log_with", "none",
            "--stage1_iters", str(args.stage1_iters), "--stage2_iters", str(args.stage2_iters),
            "--stage3_epochs", str(args.stage3_epochs or LAYOUTS[dataset][1]), "--classifier_epochs", str(args.classifier_epochs),
            "--syn_num", str(args.syn_num), "--model_overrides", *WIDTHS]


def fresh(folder: Path) -> Path:
    """A step that did not finish left a partial folder: start it again."""
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def view_flags(variant: str) -> dict:
    """`--shares` entries: a share of every stage ("0.25"), or of stages 2-3 only ("0.25+stage1")."""
    share, _, whole = variant.partition("+")
    return {"view_schedule": float(share), "view_shortens": "after_stage1" if whole == "stage1" else "all"}


def choose(run_args, data: ZSLDataset, variant: str, folder: Path) -> dict:
    """The default run's choices on validation with the view schedule `variant`."""
    start = time.perf_counter()
    _, selection = choose_on_validation(dataclasses.replace(run_args, **view_flags(variant),
                                                            output_dir=str(fresh(folder))), data)
    return {"seconds": time.perf_counter() - start, "preset": selection["preset_choice"]["chosen"],
            "offset": selection["calibration"]["seen_score_offset"],
            "validation_h": selection["validation_scores"]["gzsl_h"],
            "candidates_h": {k: v["gzsl_h"] for k, v in selection["preset_choice"]["candidates"].items()}}


def preset_args(run_args, preset: str):
    """The arguments of the real run of `preset` as the choice returns them (calibrated)."""
    return candidate_args(dataclasses.replace(run_args, calibration="validation"), preset)


def real_run(run_args, preset: str, data: ZSLDataset, folder: Path) -> dict:
    """The real run of a chosen preset, uncalibrated (each view's offset is applied after)."""
    start = time.perf_counter()
    results, _ = train_and_evaluate(dataclasses.replace(preset_args(run_args, preset), output_dir=str(fresh(folder))),
                                    data)
    return {"seconds": time.perf_counter() - start, "raw_h": results["gzsl_h"], "czsl": results["czsl_acc"]}


def gzsl_scores(folder: Path, splits: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, SCEGGModel]:
    """The saved GZSL classifier's uncalibrated scores on two cached splits (seen side, unseen
    side) of a finished run, with their labels."""
    model = SCEGGModel.from_pretrained(folder).eval()
    cache = load_file(str(folder / "checkpoints" / "after_classifiers" / "cache.safetensors"))
    with torch.no_grad():
        scores = [model.gzsl_classifier(model.classifier_features(cache[f"{s}/features"].float())).float().numpy()
                  for s in splits]
    return np.concatenate(scores), torch.cat([cache[f"{s}/labels"] for s in splits]).numpy(), model


def h_at(scores: np.ndarray, refs: np.ndarray, model: SCEGGModel, offset: float) -> dict[str, float]:
    """U, S, H (%) of the scores calibrated with `offset`."""
    predicted = calibrated_predictions(scores, model.config.seen_class_ids, offset)
    unseen = np.isin(refs, model.config.unseen_class_ids)
    u = mean_per_class_accuracy(predicted[unseen], refs[unseen])
    s = mean_per_class_accuracy(predicted[~unseen], refs[~unseen])
    return {"u": 100 * u, "s": 100 * s, "h": 100 * harmonic_mean(s, u)}


def gap_medians(scores: np.ndarray, refs: np.ndarray, model: SCEGGModel) -> dict[str, float]:
    """Median of (best seen score - best unseen score) over seen and over unseen images: the
    offset that balances U and S lies between the two."""
    seen, unseen = (np.asarray(model.config.seen_class_ids), np.asarray(model.config.unseen_class_ids))
    gap = scores[:, seen].max(axis=1) - scores[:, unseen].max(axis=1)
    is_unseen = np.isin(refs, unseen)
    return {"gap_seen_images": float(np.median(gap[~is_unseen])), "gap_unseen_images": float(np.median(gap[is_unseen]))}


def matched_view(data: ZSLDataset, seed: int) -> ZSLDataset:
    """The validation view with as many pseudo-unseen classes as make their share of the view's
    classes the real unseen share; the other val classes are dropped from it (never trained on)."""
    view = validation_view(data, seed)
    real_seen, real_unseen = len(data.semantics.seen_class_ids), len(data.semantics.unseen_class_ids)
    view_seen, val = len(view.semantics.seen_class_ids), np.asarray(view.semantics.unseen_class_ids)
    count = min(len(val), max(1, round(view_seen * real_unseen / real_seen)))
    kept = np.sort(np.random.default_rng([seed, 11]).choice(val, count, replace=False))
    unseen_split = view.splits["test_unseen"]
    splits = DatasetDict({**view.splits, "test_unseen": unseen_split.select(
        np.flatnonzero(np.isin(np.asarray(unseen_split["label"]), kept)))})
    semantics = dataclasses.replace(view.semantics, unseen_class_ids=kept)
    return ZSLDataset(name=f"{data.name} (validation view, matched unseen share)", splits=splits, semantics=semantics)


def matched_offset(run_args, preset: str, data: ZSLDataset, variant: str, folder: Path) -> dict:
    """The offset chosen on the matched-share view (`preset`, view schedule `variant`)."""
    view = matched_view(data, run_args.seed)
    view_args = view_arguments(dataclasses.replace(preset_args(run_args, preset), **view_flags(variant)), fresh(folder))
    _, progress = train_and_evaluate(view_args, view, view=True)
    best = best_epochs(progress["scores_by_epoch"][-1:], calibrated=True)
    return {"offset": best["seen_score_offset"], "validation_h": best["gzsl_h"], "share": variant,
            "classes": [len(view.semantics.seen_class_ids), len(view.semantics.unseen_class_ids)]}


def score_offsets(record: dict, folder: Path, ceiling: bool) -> None:
    """Test U / S / H of the real run of each view's preset at that view's offset (and, with
    `ceiling`, the TEST-selected offset and the score gaps on the views and on test)."""
    for preset in record["real"]:
        scores, refs, model = gzsl_scores(folder / f"real-{preset}", ("test_seen", "test_unseen"))
        for view in [v for v in record["views"].values() if v["preset"] == preset]:
            view["test"] = h_at(scores, refs, model, view["offset"])
        if record.get("matched", {}).get("preset") == preset:
            record["matched"]["test"] = h_at(scores, refs, model, record["matched"]["offset"])
        if ceiling:
            best = choose_seen_score_offset(scores, refs, model.config.seen_class_ids, model.config.unseen_class_ids)
            record["real"][preset]["ceiling"] = {"offset": best["gamma"], "h": 100 * best["harmonic_mean"],
                                                 **gap_medians(scores, refs, model)}
    if ceiling:
        for name, view in record["views"].items():
            view_folder = folder / f"view-{name}" / "validation" / view["preset"]
            view.update(gap_medians(*gzsl_scores(view_folder, ("test_seen", "test_unseen"))))


def one_seed(args: argparse.Namespace, dataset: str, seed: int, saved: dict) -> dict:
    """Every step of one layout and seed; `saved` (the json so far) is written after each."""
    folder = Path(args.output_dir) / "runs" / f"{dataset}-seed{seed}"
    record = saved.setdefault(f"{dataset} seed {seed}", {"views": {}, "real": {}})
    run_args = parse_training_args(run_argv(args, dataset, layout_data(args, dataset), seed, folder))
    data = load_data(run_args)
    for variant in args.shares:
        if variant not in record["views"]:
            record["views"][variant] = choose(run_args, data, variant, folder / f"view-{variant}")
            write(args, saved)
    for preset in {view["preset"] for view in record["views"].values()} - set(record["real"]):
        record["real"][preset] = real_run(run_args, preset, data, folder / f"real-{preset}")
        write(args, saved)
    reference = record["views"][args.shares[0]]["preset"]
    if args.matched_share and "matched" not in record:
        record["matched"] = {"preset": reference,
                             **matched_offset(run_args, reference, data, args.shares[-1], folder / "matched")}
    score_offsets(record, folder, args.test_selected_ceiling)
    write(args, saved)
    return record


def write(args: argparse.Namespace, saved: dict) -> None:
    path = Path(args.output_dir) / "view_cost.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1))


def print_rows(args: argparse.Namespace, name: str, record: dict) -> None:
    """One line per view share (and the matched view) of one layout and seed."""
    for share, view in record["views"].items():
        real = record["real"][view["preset"]]
        test = view.get("test") or {}
        line = (f"| {name} | {share} | {view['seconds']:.0f} | {view['seconds'] / real['seconds']:.2f} | "
                f"{view['preset']} | {view['offset']:.2f} | {view['validation_h']:.1f} | {test.get('h', float('nan')):.1f}")
        if args.test_selected_ceiling:
            ceiling = real.get("ceiling", {})
            line += (f" | {ceiling.get('offset', float('nan')):.2f} | {ceiling.get('h', float('nan')):.1f} | "
                     f"{view.get('gap_seen_images', float('nan')):.2f} / {view.get('gap_unseen_images', float('nan')):.2f} | "
                     f"{ceiling.get('gap_seen_images', float('nan')):.2f} / {ceiling.get('gap_unseen_images', float('nan')):.2f}")
        print(line + " |", flush=True)
    if "matched" in record:
        matched = record["matched"]
        print(f"| {name} | matched unseen share {matched['classes'][0]}/{matched['classes'][1]} ({matched['share']}) | - | - | "
              f"{matched['preset']} | {matched['offset']:.2f} | {matched['validation_h']:.1f} | "
              f"{matched.get('test', {}).get('h', float('nan')):.1f} |", flush=True)


def header(args: argparse.Namespace) -> None:
    columns = ["layout, seed", "view share", "view s", "view / real run", "preset", "offset", "val H", "test H"]
    if args.test_selected_ceiling:
        columns += ["TEST-selected offset (ceiling)", "its H (TEST-selected, ceiling)",
                    "view gap S / U imgs", "TEST gap S / U imgs"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns), flush=True)


def summary(args: argparse.Namespace, saved: dict) -> None:
    """Per layout and share: mean ± std of the offset and test H, preset agreement with the first share."""
    for dataset in args.datasets:
        records = [saved[f"{dataset} seed {s}"] for s in args.seeds if f"{dataset} seed {s}" in saved]
        for share in args.shares:
            kept = [r for r in records if share in r["views"]]
            views = [r["views"][share] for r in kept]
            same = sum(v["preset"] == r["views"][args.shares[0]]["preset"] for v, r in zip(views, kept))
            tests = [v["test"]["h"] for v in views if v.get("test")]
            ratio = [v["seconds"] / r["real"][v["preset"]]["seconds"] for v, r in zip(views, kept)]
            print(f"{dataset} share {share}: offset {_mean_std([v['offset'] for v in views])}, "
                  f"test H {_mean_std(tests)}, view / real {_mean_std(ratio)}, "
                  f"preset as share {args.shares[0]}: {same}/{len(views)}", flush=True)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shares", nargs="+", default=["1.0", "0.25", "0.25+stage1"],
                        help="view schedules to compare: a --view_schedule share of every stage (0.25), or of stages 2-3 "
                             "with stage 1 whole (0.25+stage1, --view_shortens after_stage1); the first is the "
                             "reference (1.0: the full view)")
    parser.add_argument("--metadata_dir", default=str(DEFAULT_METADATA))
    parser.add_argument("--output_dir", default="outputs/view_cost")
    parser.add_argument("--grid", type=int, default=2, help="regions per side of the synthetic feature map")
    parser.add_argument("--feature_dim", type=int, default=64)
    parser.add_argument("--render", nargs="*", default=[], help="SyntheticConfig fields as key=value")
    parser.add_argument("--stage1_iters", type=int, default=400)
    parser.add_argument("--stage2_iters", type=int, default=400)
    parser.add_argument("--stage3_epochs", type=int, help="stage-3 epochs of the run (default: the layout's, LAYOUTS)")
    parser.add_argument("--classifier_epochs", type=int, default=10)
    parser.add_argument("--syn_num", type=int, default=200)
    parser.add_argument("--matched_share", action="store_true",
                        help="also run the view with the pseudo-unseen share matched to the real unseen share")
    parser.add_argument("--test_selected_ceiling", action="store_true",
                        help="also report the offset best on TEST and its H, labelled: a ceiling no protocol may use")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    path = Path(args.output_dir) / "view_cost.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    header(args)
    for dataset in args.datasets:
        for seed in args.seeds:
            print_rows(args, f"{dataset} {seed}", one_seed(args, dataset, seed, saved))
    summary(args, saved)


if __name__ == "__main__":
    main()

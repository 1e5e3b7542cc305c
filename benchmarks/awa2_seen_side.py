"""Why the GZSL seen side of `awa2-paper` collapses: one switch at a time from `awa2-paper`
towards `awa2-published`, over seeds, on synthetic features in the real AWA2 layout.

    python benchmarks/awa2_seen_side.py --seeds 0 1 --output_dir outputs/awa2_seen_side

Every variant is an honest run (`scegg train`, fixed short schedule, calibration offset chosen on
the validation view) of `awa2-paper` with exactly one of its differences from `awa2-published`
switched to the published value; the two presets themselves are the first and last rows. Per run
it reads:

- `probe S`: the seen-only accuracy of the real dense features g after stage 1, i.e. of a
  linear softmax probe trained on the cached trainval g and scored on test_seen (per-class mean):
  how well g itself still tells the seen classes apart;
- `GZSL S-only` / `U-only`: the final GZSL classifier restricted to the seen classes on
  test_seen / to the unseen classes on test_unseen (`results.json`: `gzsl_seen_only`,
  `gzsl_unseen_only`);
- `S->U raw`: the share of seen test images the uncalibrated GZSL classifier calls unseen;
- U / S / H uncalibrated and calibrated, and CZSL;
- `val H`: the calibrated H of the validation view (what `--preset_choice` compares), and the
  seen-score offset chosen there.

Only with `--test_selected_ceiling` (off by default) does it also read the test splits to find
the offset that would have been best on TEST and its H: a test-selected ceiling no protocol may
use, labelled so in the table, that shows how far the validation view's offset lands from it.

Finished runs are reused. `--render key=value` changes the synthetic generator
(`SyntheticConfig` fields, e.g. the proxy's class-specific appearance) and writes the data into
its own folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from benchmark_runs import DEFAULT_METADATA, WIDTHS, chosen_preset, summarise, synthetic_data, train_run
from safetensors.torch import load_file

from modeling_scegg import SCEGGModel
from modeling_scegg.evaluation import choose_seen_score_offset, mean_per_class_accuracy
from modeling_scegg.training.arguments import parse_key_values

# name -> (model overrides, training flags) applied to awa2-paper; each is one published value
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "awa2-paper": ([], []),
    "stage1 softmax over seen classes": (["stage1_classes=seen"], []),
    "runtime g = mean (no SC MLP)": (["runtime_compression=mean"], []),
    "L_SCE on reconstructions": (["sce_source=reconstruction"], []),
    "L_SCR as MSE": (["regression_loss=mse"], []),
    "classifier input [x, Dec(x), Dec_h(x)]": (["classifier_input=augmented"], []),
    "weighted L1 in L_Rec": (["decoder_loss=weighted_l1"], []),
    "adaptive GP weight": (["adaptive_gp=true"], []),
    "decoder trained (not frozen)": (["freeze_decoder=false"], []),
    "RMSprop in stages 1-2": ([], ["--stage1_optimizer", "rmsprop", "--stage2_optimizer", "rmsprop"]),
    "lambda_s / lambda_u = 1 / 0.001": (["lambda_s=1.0", "lambda_u=0.001"], []),
    "lambda_r = 0.1": (["lambda_r=0.1"], []),
    "a1 = a2 = 0 (no feedback)": (["feedback_weight=0.0", "synthesis_feedback_weight=0.0"], []),
    "stage3_lr = 1e-5": ([], ["--stage3_lr", "1e-5"]),
    "awa2-published": (None, []),
}
# not a switch: the AWA2 default as a user gets it (no --config; the run chooses between
# awa2-published and awa2-paper on its validation view), for the table's default-vs-old rows
DEFAULT_RUN = "default (preset choice)"
COLUMNS = [("probe S", "probe_seen_acc"), ("S-only", "gzsl_seen_only"), ("U-only", "gzsl_unseen_only"),
           ("S->U raw", "raw_gzsl_seen_as_unseen"), ("U raw", "raw_gzsl_unseen"), ("S raw", "raw_gzsl_seen"),
           ("H raw", "raw_gzsl_h"), ("U cal", "gzsl_unseen"), ("S cal", "gzsl_seen"), ("H cal", "gzsl_h"),
           ("CZSL", "czsl_acc"), ("val H", "validation_h"), ("offset", "validation_offset"), ("wall s", "wall_seconds")]
# only with --test_selected_ceiling: chosen on TEST, a ceiling no protocol may use
CEILING_COLUMNS = [("TEST-selected offset (ceiling)", "test_selected_offset"),
                   ("its H (TEST-selected, ceiling)", "test_selected_h")]


def linear_probe_seen_accuracy(cache: dict[str, torch.Tensor], epochs: int = 15, seed: int = 0) -> float:
    """Seen-only accuracy (per-class mean, %) of a softmax probe on the real g: trained on the
    trainval cache, scored on test_seen. The probe is the GZSL classifier without the synthetic
    unseen rows, so the gap between the two is what the generated features cost the seen side."""
    x, y = cache["train/features"].float(), cache["train/labels"]
    classes = torch.unique(y)
    targets = torch.searchsorted(classes, y)
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], len(classes))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(256):
            optimizer.zero_grad()
            F.cross_entropy(probe(x[batch]), targets[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        predicted = classes[probe(cache["test_seen/features"].float()).argmax(dim=1)]
    return 100 * mean_per_class_accuracy(predicted.numpy(), cache["test_seen/labels"].numpy())


def run(args: argparse.Namespace, data_dir: Path, name: str, seed: int) -> dict[str, float]:
    """One honest training run of a variant in a subprocess; its metrics (reused when done)."""
    overrides, flags = VARIANTS.get(name, ([], []))
    out = Path(args.output_dir) / "runs" / f"{_slug(name)}-seed{seed}"
    config = (["--preset_choice", "auto"] if name == DEFAULT_RUN
              else ["--config", "awa2-published" if overrides is None else "awa2-paper", "--preset_choice", "off"])
    argv = ["--dataset", "AWA2", "--data_dir", str(data_dir), "--cache_dir", str(Path(args.output_dir) / "cache"),
            *config, "--seed", str(seed), "--plots", "false", "--log_with", "none", "--calibration", "validation",
            "--stage1_iters", str(args.stage1_iters), "--stage2_iters", str(args.stage2_iters),
            "--stage3_epochs", str(args.stage3_epochs), "--classifier_epochs", str(args.classifier_epochs),
            "--syn_num", str(args.syn_num), *flags, "--model_overrides", *WIDTHS, *(overrides or [])]
    try:
        results = train_run(argv, out)
    except RuntimeError as error:
        raise RuntimeError(f"{name} seed {seed}: {error}") from error
    return metrics(out, results, seed, args.test_selected_ceiling)


def test_selected_offset_ceiling(out: Path, cache: dict[str, torch.Tensor]) -> dict[str, float]:
    """The seen-score offset that would be best on TEST, and its H: a ceiling no protocol may
    use, printed only to show how far the offset chosen on the validation view is from it."""
    model = SCEGGModel.from_pretrained(out).eval()
    with torch.no_grad():
        scores = [model.gzsl_classifier(model.classifier_features(cache[f"{split}/features"].float())).numpy()
                  for split in ("test_seen", "test_unseen")]
    refs = torch.cat([cache["test_seen/labels"], cache["test_unseen/labels"]]).numpy()
    best = choose_seen_score_offset(np.concatenate(scores), refs, model.config.seen_class_ids,
                                    model.config.unseen_class_ids)
    return {"test_selected_offset": best["seen_score_offset"], "test_selected_h": best["gzsl_h"]}


def metrics(out: Path, results: dict, seed: int, ceiling: bool = False) -> dict[str, float]:
    """The columns of one finished run; the probe (and, when asked, the test-selected offset
    ceiling) read the run's last feature-cache snapshot once and are kept in diagnostics.json."""
    saved = out / "diagnostics.json"
    diagnostics = json.loads(saved.read_text()) if saved.is_file() else {}
    if "probe_seen_acc" not in diagnostics or (ceiling and "test_selected_h" not in diagnostics):
        cache = load_file(str(out / "checkpoints" / "after_classifiers" / "cache.safetensors"))
        diagnostics["probe_seen_acc"] = linear_probe_seen_accuracy(cache, seed=seed)
        if ceiling:
            diagnostics.update(test_selected_offset_ceiling(out, cache))
        saved.write_text(json.dumps(diagnostics))
    if not ceiling:
        diagnostics = {k: v for k, v in diagnostics.items() if not k.startswith("test_selected")}
    values = {k: v for k, v in results.items() if isinstance(v, float)}
    if chosen_preset(results):
        values["chosen"] = chosen_preset(results)
    values.update({f"raw_{k}": v for k, v in results.get("uncalibrated", {}).items()})
    calibration = results.get("calibration", {})
    if calibration:
        values.update(validation_offset=calibration["seen_score_offset"],
                      validation_h=calibration["validation_gzsl_h"]["calibrated"])
    values.update(diagnostics)
    return values


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def print_table(table: dict[str, dict[str, tuple[float, float]]], seeds: list[int], columns: list) -> None:
    """Markdown: mean ± std over the seeds of every column."""
    print("\n| variant (one switch from awa2-paper) | seeds | " + " | ".join(c for c, _ in columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for name, stats in table.items():
        cells = [f"{stats[k][0]:.1f} ± {stats[k][1]:.1f}" if k in stats else "-" for _, k in columns]
        print(f"| {name} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, DEFAULT_RUN])
    parser.add_argument("--metadata_dir", default=str(DEFAULT_METADATA))
    parser.add_argument("--output_dir", default="outputs/awa2_seen_side")
    parser.add_argument("--grid", type=int, default=4, help="regions per side of the synthetic feature map")
    parser.add_argument("--feature_dim", type=int, default=128)
    parser.add_argument("--render", nargs="*", default=[], help="SyntheticConfig fields as key=value")
    parser.add_argument("--fraction", type=float, default=0.4, help="share of AWA2's images kept (same classes)")
    parser.add_argument("--stage1_iters", type=int, default=300)
    parser.add_argument("--stage2_iters", type=int, default=300)
    parser.add_argument("--stage3_epochs", type=int, default=2)
    parser.add_argument("--classifier_epochs", type=int, default=10)
    parser.add_argument("--syn_num", type=int, default=600)
    parser.add_argument("--test_selected_ceiling", action="store_true",
                        help="also report the offset best on TEST and its H, labelled: a ceiling no protocol may use")
    args = parser.parse_args()
    columns = COLUMNS + (CEILING_COLUMNS if args.test_selected_ceiling else [])
    render = parse_key_values(args.render, "--render")
    data_dir = synthetic_data("AWA2", args.metadata_dir, Path(args.output_dir) / "data", render, args.fraction,
                              args.grid, args.feature_dim)
    table = {}
    for name in args.variants:
        runs = [run(args, data_dir, name, seed) for seed in args.seeds]
        table[name] = summarise(runs)
        if any("chosen" in r for r in runs):
            print(f"{name} chose: " + ", ".join(f"seed {s}: {r.get('chosen')}" for s, r in zip(args.seeds, runs)))
        print(f"{name}: " + ", ".join(f"{c} {table[name][k][0]:.1f}" for c, k in columns if k in table[name]), flush=True)
    (Path(args.output_dir) / "awa2_seen_side.json").write_text(json.dumps(table, indent=2))
    print_table(table, args.seeds, columns)


if __name__ == "__main__":
    main()

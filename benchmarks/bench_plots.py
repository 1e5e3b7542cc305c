"""Seconds of what a training run does after its last stage: plots (t-SNE first), model card, saving.

Builds generated data of a CUB-like layout (by default the cub7 layout of ``bench_stages.py``:
7 x 7 x 512 regions, 312 attributes, 200 classes of which 50 unseen, 6013 images, so about 2400
test images), a model sized from it (random weights: the work does not depend on them), and the
dense features g of the test splits as a training run hands them to ``write_plots``. Then times,
in one process:

* **t-SNE plot before**: the embedding as the plot computed it before (every real / synthetic
  group of a class capped at 100 points, sklearn's Barnes-Hut t-SNE with PCA init on the
  full-width features, 1000 iterations, one thread), drawn by today's code;
* **t-SNE plot now**: ``plot_tsne`` as it is now (embedding and drawing), on the same inputs:
  real test features and 100 synthetic ones per unseen class around shared class centres, the
  test splits' counts per class (a random model's g has no class structure worth looking at);
* **synthesize**: the generator's features for the plot, 100 per unseen class before, now
  ``reporting.SYNTHETIC_PER_CLASS``;
* **write_plots**: every PNG a run writes (training curves, t-SNE, per-class accuracy, attention);
* **save_model**: the model folder with its card.

    python benchmarks/bench_plots.py [--images 6013] [--feature_dim 512] [--output_dir DIR]

``--output_dir`` keeps the PNGs (both t-SNE pictures:
``tsne_before.png``, ``tsne_now.png``) to look at side by side, and the t-SNE of overlapping
classes at the package's iteration count and at 1000 (``tsne_overlapping_*_iterations.png``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from modeling_scegg import SCEGGConfig, SCEGGModel, visualization
from modeling_scegg.data import RegionFeatureReader
from modeling_scegg.evaluation import predict_split
from modeling_scegg.export import save_model
from modeling_scegg.reporting import SYNTHETIC_PER_CLASS, write_plots
from modeling_scegg.training import load_data, parse_training_args
from modeling_scegg.visualization import _draw_tsne_points, _new_figure, _save_atomic, _subsample_per_group, plot_tsne

CUB_SPLITS = np.array([7057, 1764, 2967])  # trainval / test_seen / test_unseen images of CUB
BEFORE_SYNTHETIC_PER_CLASS = 100  # what write_plots synthesised per unseen class for the t-SNE before


def load(args, cache: Path):
    sizes = np.maximum(np.round(CUB_SPLITS * args.images / CUB_SPLITS.sum()).astype(int), [150, 150, 50])
    overrides = ["num_classes=200", "num_unseen=50", "num_val=0", "num_attributes=312", "num_regions=49",
                 f"feature_dim={args.feature_dim}", f"split_sizes={json.dumps([int(s) for s in sizes])}"]
    train_args = parse_training_args(["--dataset", "synthetic", "--synthetic_overrides", *overrides,
                                      "--cache_dir", str(cache), "--log_with", "none"])
    data = load_data(train_args)
    semantics = data.semantics
    config = SCEGGConfig(feature_dim=data.feature_dim, num_regions=data.num_regions,
                         num_attributes=semantics.num_attributes, num_classes=semantics.num_classes,
                         seen_class_ids=[int(c) for c in semantics.seen_class_ids],
                         unseen_class_ids=[int(c) for c in semantics.unseen_class_ids],
                         word_dim=int(semantics.word_vectors.shape[1]))
    torch.manual_seed(0)
    model = SCEGGModel(config).eval()
    model.set_class_semantics(torch.from_numpy(semantics.attributes), torch.from_numpy(semantics.word_vectors))
    with torch.no_grad():
        dense = {}
        for split in ("test_seen", "test_unseen"):
            predicted = predict_split(model, RegionFeatureReader(data.splits[split]))
            dense[split] = (torch.from_numpy(predicted["dense"]), torch.from_numpy(predicted["labels"]))
    return model, data, dense


def clustered_features(model, dense, dim: int) -> tuple[np.ndarray, ...]:
    """Real test features and 100 synthetic ones per unseen class around shared class centres:
    the picture a working generator gives (the random model's own g has no class structure to
    look at). Same counts per class as the test splits."""
    rng = np.random.default_rng(0)
    labels = torch.cat([dense["test_seen"][1], dense["test_unseen"][1]]).numpy()
    centres = rng.normal(scale=1.5, size=(model.config.num_classes, dim))
    real = centres[labels] + rng.normal(size=(labels.size, dim))
    syn_y = np.repeat(model.config.unseen_class_ids, BEFORE_SYNTHETIC_PER_CLASS)
    synthetic = centres[syn_y] + 0.3 + 0.8 * rng.normal(size=(syn_y.size, dim))
    return real.astype(np.float32), labels, synthetic.astype(np.float32), syn_y


def reference_tsne(real, labels, synthetic, syn_y, class_names, unseen, path: Path) -> None:
    """The previous plot's embedding (see the module docstring), drawn by today's code."""
    features = np.concatenate([real, synthetic])
    labels = np.concatenate([labels, syn_y])
    is_synthetic = np.arange(len(labels)) >= len(real)
    keep = _subsample_per_group(labels * 2 + is_synthetic, 100, np.random.default_rng(0))
    tsne = TSNE(n_components=2, perplexity=30.0, init="pca", learning_rate="auto", random_state=0)
    with threadpool_limits(limits=1):
        xy = tsne.fit_transform(features[keep])
    fig = _new_figure(9.0, 6.5)
    ax = fig.add_subplot()
    _draw_tsne_points(ax, xy, labels[keep], is_synthetic[keep], set(unseen), class_names)
    ax.set_title(f"before: {len(keep)} points, 1000 iterations on all {features.shape[1]} dimensions")
    _save_atomic(fig, path)


def iterations_check(folder: Path) -> None:
    """The same t-SNE plot at the package's iteration count and at sklearn's default 1000, on
    overlapping classes (60 classes, 15 unseen, centres closer than the noise), to compare by eye."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=0.25, size=(60, 512))
    real_y, syn_y = np.repeat(np.arange(60), 20), np.repeat(np.arange(45, 60), 30)
    real = centres[real_y] + rng.normal(size=(real_y.size, 512))
    synthetic = centres[syn_y] + 0.9 * rng.normal(size=(syn_y.size, 512))
    chosen = visualization.TSNE_ITERATIONS
    for iterations in (chosen, 1000):
        visualization.TSNE_ITERATIONS = iterations
        plot_tsne(real, real_y, synthetic, syn_y, [f"c{i}" for i in range(60)], list(range(45, 60)),
                  folder / f"tsne_overlapping_{iterations}_iterations.png", title=f"{iterations} iterations")
    visualization.TSNE_ITERATIONS = chosen


def timed(label: str, work) -> float:
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    print(f"{label:<28}{seconds:8.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6013)
    parser.add_argument("--feature_dim", type=int, default=512, help="D (the dense features are D wide)")
    parser.add_argument("--output_dir", type=Path, help="keep the PNGs here (default: a temp dir, deleted)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-plots-") as tmp:
        out = args.output_dir or Path(tmp) / "out"
        model, data, dense = load(args, Path(tmp) / "cache")
        tests = sum(len(dense[s][1]) for s in dense)
        print(f"layout: R=49 D={data.feature_dim} A=312 C=200 (unseen 50), {tests} test images; "
              f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")
        history = {f"stage{s}/loss": [(i, float(np.exp(-i / 500))) for i in range(0, 2000, 10)] for s in (1, 2, 3)}
        tsne_inputs = (*clustered_features(model, dense, data.feature_dim), list(data.semantics.class_names),
                       model.config.unseen_class_ids)
        reference = timed("t-SNE plot before", lambda: reference_tsne(*tsne_inputs, out / "tsne_before.png"))
        ours = timed("t-SNE plot now (plot_tsne)", lambda: plot_tsne(*tsne_inputs, out / "tsne_now.png"))
        for label, count in (("before", BEFORE_SYNTHETIC_PER_CLASS), ("now", SYNTHETIC_PER_CLASS)):
            generator = torch.Generator().manual_seed(0)
            timed(f"synthesize {count} / class ({label})",
                  lambda: model.synthesize(model.config.unseen_class_ids, count, generator=generator))  # noqa: B023
        plots = timed("write_plots (every PNG)", lambda: write_plots(model, data, out / "plots", history=history,
                                                                     dense=dense, seed=0))
        saving = timed("save_model (folder, card)", lambda: save_model(model, out / "model", results={"dataset": "x"}))
        if args.output_dir:
            iterations_check(out)
    print(f"t-SNE before / now: {reference:.1f} / {ours:.1f} s (x{reference / ours:.1f}); "
          f"after the last stage now: plots {plots:.1f} s + saving {saving:.1f} s")


if __name__ == "__main__":
    main()

"""The PNGs a person looks at for a trained model: loss curves, t-SNE of real vs synthetic dense
features (the paper's Fig. 4) and attribute attention maps of test images (Fig. 3).

Training writes them at the end of a run; `scegg plot` writes them for any checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import RegionFeatureReader, ZSLDataset
from .evaluation import predict_split
from .modeling_scegg import SCEGGModel
from .visualization import (
    plot_attention_maps,
    plot_per_class_accuracy,
    plot_training_curves,
    plot_tsne,
)

# Synthetic features per unseen class for the t-SNE: about as many as the plot keeps per class at
# CUB's size (its 3000-point budget leaves ~12 per class group there, up to ~50 on AWA2); the
# generator's 4096-wide layers made 100 per class cost more than the embedding itself.
SYNTHETIC_PER_CLASS = 30


def write_plots(
    model: SCEGGModel,
    data: ZSLDataset,
    folder: str | Path,
    *,
    history: dict[str, list[tuple[int, float]]] | None = None,
    dense: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    seed: int = 0,
    num_attention_images: int = 2,
) -> list[Path]:
    """`dense` maps test_seen / test_unseen to (scaled g, labels) when the caller has them
    (training does); otherwise they are computed. Attention maps need a square region grid."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    written = []
    if history:
        written.append(plot_training_curves(history, folder / "training_curves.png", title=f"SC-EGG on {data.name}"))
    if dense is None:
        predicted = {split: predict_split(model, RegionFeatureReader(data.splits[split]))
                     for split in ("test_seen", "test_unseen")}
        dense = {split: (torch.from_numpy(p["dense"]), torch.from_numpy(p["labels"])) for split, p in predicted.items()}
    real = torch.cat([dense["test_seen"][0], dense["test_unseen"][0]]).cpu().numpy()
    labels = torch.cat([dense["test_seen"][1], dense["test_unseen"][1]]).cpu().numpy()
    generator = torch.Generator().manual_seed(seed)
    syn_x, syn_y = model.synthesize(model.config.unseen_class_ids, SYNTHETIC_PER_CLASS, generator=generator)
    written.append(plot_tsne(real, labels, syn_x.cpu().numpy(), syn_y.cpu().numpy(), data.semantics.class_names,
                             model.config.unseen_class_ids, folder / "tsne_dense_features.png", seed=seed,
                             title=f"Dense-semantic features on {data.name}: real vs synthetic"))
    written += _per_class_plots(model, data, dense, folder)
    side = int(round(data.num_regions ** 0.5))
    if model.config.dense_feature_source == "scen" and side * side == data.num_regions:
        written += _attention_plots(model, data, folder, num_attention_images)
    return written


@torch.no_grad()
def _per_class_plots(model: SCEGGModel, data: ZSLDataset, dense: dict[str, tuple[torch.Tensor, torch.Tensor]],
                     folder: Path) -> list[Path]:
    """GZSL accuracy of every test class, one plot per split: where the mean hides a collapse to
    the seen classes (unseen classes near 0) or classes that are never recognised."""
    device = model.class_attributes.device
    paths = []
    for split in ("test_seen", "test_unseen"):
        features, labels = dense[split]
        scores = model.calibrated_stacking(model.gzsl_classifier(model.classifier_features(features.to(device))))
        predicted, labels = scores.argmax(-1).cpu().numpy(), labels.cpu().numpy()
        accuracy = {int(c): float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)}
        as_seen = float(np.isin(predicted, model.config.seen_class_ids).mean())
        paths.append(plot_per_class_accuracy(accuracy, data.semantics.class_names, folder / f"gzsl_per_class_{split}.png",
                                             title=f"GZSL accuracy per {split} class on {data.name} "
                                                   f"({100 * as_seen:.0f}% predicted as seen classes)"))
    return paths


@torch.no_grad()
def _attention_plots(model: SCEGGModel, data: ZSLDataset, folder: Path, count: int) -> list[Path]:
    reader = RegionFeatureReader(data.splits["test_unseen"])
    indices = np.arange(min(count, len(reader)))
    device = model.class_attributes.device
    output = model(torch.from_numpy(reader.take(indices)).to(device, torch.float32), output_attentions=True)
    paths = []
    for i, index in enumerate(indices):
        label = data.semantics.class_names[int(reader.labels[index])]
        paths.append(plot_attention_maps(output.attentions[i].cpu().numpy(), None, data.semantics.attribute_names,
                                         folder / f"attention_test_unseen_{index}.png",
                                         title=f"test_unseen image {index} ({label})"))
    return paths

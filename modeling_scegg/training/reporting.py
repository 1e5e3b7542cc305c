"""The PNGs a person looks at after a run: loss curves, t-SNE of real vs synthetic dense
features (the paper's Fig. 4) and attribute attention maps of test images (Fig. 3)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import ZSLDataset
from ..data.store import RegionFeatureReader
from ..visualization import plot_attention_maps, plot_training_curves, plot_tsne
from .classifiers import synthesize_unseen
from .common import RunContext


def write_plots(ctx: RunContext, data: ZSLDataset, caches, folder: Path, num_attention_images: int = 2) -> list[Path]:
    """Attention maps need a square region grid (14 x 14, 7 x 7); other layouts get the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    semantics = data.semantics
    written = [plot_training_curves(ctx.history, folder / "training_curves.png", title=f"SC-EGG on {data.name}")]
    real = torch.cat([caches["test_seen"]["features"], caches["test_unseen"]["features"]]).numpy()
    labels = torch.cat([caches["test_seen"]["labels"], caches["test_unseen"]["labels"]]).numpy()
    syn_x, syn_y = synthesize_unseen(ctx)
    written.append(plot_tsne(real, labels, syn_x.numpy(), syn_y.numpy(), semantics.class_names,
                             semantics.unseen_class_ids, folder / "tsne_dense_features.png", seed=ctx.args.seed,
                             title=f"Dense-semantic features on {data.name}: real vs synthetic"))
    side = int(round(data.num_regions ** 0.5))
    if ctx.model.config.dense_feature_source == "scen" and side * side == data.num_regions:
        written += _attention_plots(ctx, data, folder, num_attention_images)
    return written


@torch.no_grad()
def _attention_plots(ctx: RunContext, data: ZSLDataset, folder: Path, count: int) -> list[Path]:
    reader = RegionFeatureReader(data.splits["test_unseen"])
    indices = np.arange(min(count, len(reader)))
    device = ctx.model.class_attributes.device
    regions = torch.from_numpy(reader.take(indices)).to(device, torch.float32)
    output = ctx.model(regions, output_attentions=True)
    names = data.semantics.attribute_names
    paths = []
    for i, index in enumerate(indices):
        label = data.semantics.class_names[int(reader.labels[index])]
        paths.append(plot_attention_maps(output.attentions[i].cpu().numpy(), None, names,
                                         folder / f"attention_test_unseen_{index}.png",
                                         title=f"test_unseen image {index} ({label})"))
    return paths

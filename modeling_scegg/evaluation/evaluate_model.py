"""Score a trained model on a dataset's test splits, straight from region features.

This is what `scegg evaluate` runs: it needs nothing but a checkpoint (local or Hub) and the
data, so anyone can check the numbers a model card reports.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import RegionFeatureReader, ZSLDataset
from ..modeling_scegg import SCEGGModel
from .metric import zsl_scores


@torch.no_grad()
def predict_split(model: SCEGGModel, reader: RegionFeatureReader, batch_size: int = 256) -> dict[str, np.ndarray]:
    """GZSL and CZSL predictions (class ids), the scaled dense features g and the labels of one split."""
    device = model.class_attributes.device
    unseen = torch.tensor(model.config.unseen_class_ids)
    gzsl, czsl, dense = [], [], []
    batch_size = reader.batch_rows(batch_size)
    for features, _ in tqdm(reader.iter_batches(batch_size), total=-(-len(reader) // batch_size), desc="evaluate"):
        output = model(torch.from_numpy(features).to(device, torch.float32))
        gzsl.append(output.logits.argmax(-1).cpu())
        czsl.append(unseen[output.czsl_logits.argmax(-1).cpu()])
        dense.append(output.dense_features.cpu())
    return {"gzsl": torch.cat(gzsl).numpy(), "czsl": torch.cat(czsl).numpy(), "dense": torch.cat(dense).numpy(),
            "labels": np.asarray(reader.labels, dtype=np.int64)}


def evaluate_model(model: SCEGGModel, data: ZSLDataset, batch_size: int = 256) -> dict[str, float]:
    """CZSL Acc and GZSL U / S / H in percent (per-class mean accuracies), as in results.json."""
    if list(data.semantics.unseen_class_ids) != list(model.config.unseen_class_ids):
        raise ValueError(f"the model's unseen classes {model.config.unseen_class_ids[:5]}... differ from the "
                         f"dataset's {list(data.semantics.unseen_class_ids)[:5]}...: wrong dataset for this model?")
    model.eval()
    seen = predict_split(model, RegionFeatureReader(data.splits["test_seen"]), batch_size)
    unseen = predict_split(model, RegionFeatureReader(data.splits["test_unseen"]), batch_size)
    return zsl_scores(np.concatenate([seen["gzsl"], unseen["gzsl"]]), np.concatenate([seen["labels"], unseen["labels"]]),
                      unseen["czsl"], unseen["labels"], model.config.unseen_class_ids)

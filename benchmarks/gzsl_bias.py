"""Why a trained model's GZSL classifier calls unseen images seen classes: compares the generated
unseen features with the real ones, for any finished training run.

    python benchmarks/gzsl_bias.py outputs/accuracy/runs/AWA2-SC-EGG-seed0

Reads the run's model and its feature cache (checkpoints/after_classifiers/cache.safetensors, the
scaled dense features g of every split) and prints: the spread of real and generated features
(overall and within a class), how far the generated class means are from the real unseen class
means compared with the nearest real seen class, and the share of real unseen test images that
lie closer to a real seen class than to any generated unseen class. A generator whose features
are too narrow or off-centre leaves the classifier small unseen regions: that share is then the
share of unseen images lost to seen classes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_scegg import SCEGGModel  # noqa: E402


def _within_class_std(features: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.stack([features[labels == c].std(0).mean() for c in labels.unique()]).mean())


def _class_means(features: torch.Tensor, labels: torch.Tensor, classes) -> torch.Tensor:
    return torch.stack([features[labels == c].mean(0) for c in classes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="output_dir of a finished training run")
    parser.add_argument("--per_class", type=int, default=300, help="generated features per unseen class")
    args = parser.parse_args()
    model = SCEGGModel.from_pretrained(args.run).eval()
    cache = load_file(str(Path(args.run) / "checkpoints" / "after_classifiers" / "cache.safetensors"))
    seen_x, seen_y = cache["train/features"], cache["train/labels"]
    unseen_x, unseen_y = cache["test_unseen/features"], cache["test_unseen/labels"]
    unseen = model.config.unseen_class_ids
    with torch.no_grad():
        syn_x, syn_y = model.synthesize(unseen, args.per_class, generator=torch.Generator().manual_seed(0))
    for name, x, y in (("real seen (trainval)", seen_x, seen_y), ("real unseen (test)", unseen_x, unseen_y),
                       ("generated unseen", syn_x, syn_y)):
        print(f"{name:<22} per-dimension std {x.std(0).mean():.3f}, within-class std {_within_class_std(x, y):.3f}")
    seen_means = _class_means(seen_x, seen_y, seen_y.unique())
    syn_means, real_means = _class_means(syn_x, syn_y, unseen), _class_means(unseen_x, unseen_y, unseen)
    nearest_seen = torch.cdist(real_means, seen_means).min(1).values.mean()
    print(f"generated unseen class mean -> real mean of the same class: {(syn_means - real_means).norm(dim=1).mean():.3f}; "
          f"real unseen class mean -> nearest real seen class mean: {nearest_seen:.3f}")
    closer = torch.cdist(unseen_x, seen_means).min(1).values < torch.cdist(unseen_x, syn_means).min(1).values
    print(f"real unseen test images closer to a real seen class mean than to every generated unseen one: "
          f"{100 * closer.float().mean():.1f}%")


if __name__ == "__main__":
    main()

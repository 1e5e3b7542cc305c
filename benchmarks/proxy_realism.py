"""How the synthetic proxy's features behave, without training anything: for each benchmark
layout and proxy setting, how well the seen classes separate in the features (nearest class mean
of mean-pooled region features, trainval -> test_seen) and how much of the attribute information
a linear map recovers zero-shot (ridge from mean-pooled features to class attributes on the seen
classes, nearest unseen class on test_unseen). Per-class mean accuracies, percent.

    python benchmarks/proxy_realism.py --datasets AWA2 CUB SUN --fraction 0.3 --proxies plain picture-like strong

Region features of real pictures separate the seen classes far better than the classes'
attribute vectors do (a class has a look of its own; an attribute looks different on different
classes). The plain proxy carries nothing but attributes, so its seen classes are only as
separable as their attribute vectors: on the SUN layout, 645 seen classes whose attribute vectors
are close, almost not at all. The picture-like settings add `class_appearance` and
`class_signature` (`modeling_scegg.data.synthetic.SyntheticConfig`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
from benchmark_runs import DEFAULT_METADATA, PROXIES, synthetic_data
from sklearn.linear_model import Ridge

from modeling_scegg.data import RegionFeatureReader, load_zsl_dataset
from modeling_scegg.evaluation import mean_per_class_accuracy


def pooled(data, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled region features of one split, what TF-VAEGAN's images are, and the labels."""
    reader = RegionFeatureReader(data.splits[split])
    return reader.take(np.arange(len(reader))).astype(np.float32).mean(axis=1), np.asarray(reader.labels)


def separability(data, features: Callable = pooled) -> tuple[float, float]:
    """(seen nearest-class-mean accuracy, ridge CZSL accuracy), percent, of `features(data, split)`.

    The ridge reads standardised features, so features of any scale (pooled maps, a model's
    dense features) are regularised alike."""
    (x, y), (seen_x, seen_y), (unseen_x, unseen_y) = (features(data, s) for s in ("train", "test_seen", "test_unseen"))
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    distances = (seen_x**2).sum(axis=1)[:, None] - 2 * seen_x @ means.T + (means**2).sum(axis=1)[None]
    nearest = classes[np.argmin(distances, axis=1)]
    attributes, unseen = data.semantics.attributes, data.semantics.unseen_class_ids
    center, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    predicted = Ridge(alpha=1.0).fit((x - center) / scale, attributes[y]).predict((unseen_x - center) / scale)
    predicted /= np.linalg.norm(predicted, axis=1, keepdims=True)
    czsl = unseen[np.argmax(predicted @ attributes[unseen].T, axis=1)]
    return 100 * mean_per_class_accuracy(nearest, seen_y), 100 * mean_per_class_accuracy(czsl, unseen_y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["AWA2", "CUB", "SUN"])
    parser.add_argument("--proxies", nargs="+", default=["plain", "picture-like", "strong"], choices=list(PROXIES))
    parser.add_argument("--fraction", type=float, default=0.3, help="share of each benchmark's images rendered")
    parser.add_argument("--metadata_dir", default=str(DEFAULT_METADATA))
    parser.add_argument("--output_dir", default="outputs/proxy_realism")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        for name in args.proxies:
            render, grid = PROXIES[name]
            root = synthetic_data(dataset, args.metadata_dir, Path(args.output_dir), render, args.fraction, grid)
            data = load_zsl_dataset(dataset, data_dir=root, cache_dir=root / "cache")
            rows.append((dataset, name, *separability(data)))
            print(f"{dataset} {name}: seen {rows[-1][2]:.1f}, ridge CZSL {rows[-1][3]:.1f}", flush=True)
    print("\n| layout | proxy | seen classes apart (nearest mean) | ridge CZSL |\n|---|---|---:|---:|")
    for dataset, name, seen, czsl in rows:
        print(f"| {dataset} | {name} | {seen:.1f} | {czsl:.1f} |")


if __name__ == "__main__":
    main()

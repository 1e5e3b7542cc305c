"""Class-balanced batches: SC-EGG trains stage 1 (and samples stages 2-3) on batches of distinct classes.

The published training draws B different seen classes with one image each. Datasets with fewer
seen classes than B (AWA2 has 40 seen classes, batch 64) must still give full batches, so the
classes are then repeated as evenly as possible: a short batch would change the loss scale and
the optimiser step between datasets.
"""
from __future__ import annotations

import numpy as np


class ClassBalancedSampler:
    """Groups the row indices by class once, then draws balanced batches cheaply."""

    def __init__(self, labels: np.ndarray):
        labels = np.asarray(labels).reshape(-1)
        if len(labels) == 0:
            raise ValueError("class-balanced sampling needs at least one labelled row, got none")
        self._order = np.argsort(labels, kind="stable")
        self.classes, self._starts, self._counts = np.unique(labels[self._order], return_index=True, return_counts=True)

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Row indices of one batch of exactly ``batch_size`` rows, classes as balanced as possible."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        num_classes = len(self.classes)
        if num_classes >= batch_size:
            chosen = rng.choice(num_classes, batch_size, replace=False)
            picks = self._starts[chosen] + (rng.random(batch_size) * self._counts[chosen]).astype(np.int64)
            return self._order[picks]
        per_class = np.full(num_classes, batch_size // num_classes)
        per_class[rng.choice(num_classes, batch_size % num_classes, replace=False)] += 1
        rows = [self._draw(c, n, rng) for c, n in enumerate(per_class)]
        return rng.permutation(np.concatenate(rows))

    def _draw(self, class_index: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` images of one class, without repeats unless the class has fewer images."""
        size = self._counts[class_index]
        local = rng.choice(size, count, replace=count > size)
        return self._order[self._starts[class_index] + local]


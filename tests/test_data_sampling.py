"""Class-balanced batches: distinct classes when possible, always exactly batch_size rows."""
from __future__ import annotations

import numpy as np
import pytest

from modeling_scegg.data.sampling import ClassBalancedSampler


def test_distinct_classes_when_enough():
    labels = np.repeat(np.arange(150), 40)
    rng = np.random.default_rng(0)
    for _ in range(20):
        batch = ClassBalancedSampler(labels).sample(64, rng)
        assert len(batch) == 64 and len(np.unique(labels[batch])) == 64


def test_fewer_classes_than_batch_still_full_and_balanced():
    labels = np.repeat(np.arange(40), 30)  # AWA2: 40 seen classes, batch 64
    batch = ClassBalancedSampler(labels).sample(64, np.random.default_rng(0))
    counts = np.bincount(labels[batch], minlength=40)
    assert len(batch) == 64 and counts.min() == 1 and counts.max() == 2 and counts.sum() == 64


def test_tiny_classes_repeat_images():
    labels = np.array([3, 3, 7])
    batch = ClassBalancedSampler(labels).sample(10, np.random.default_rng(0))
    assert len(batch) == 10 and sorted(np.bincount(labels[batch])[[3, 7]]) == [5, 5]


def test_no_repeat_within_a_class_when_avoidable():
    labels = np.repeat(np.arange(2), 50)
    batch = ClassBalancedSampler(labels).sample(64, np.random.default_rng(0))
    assert len(np.unique(batch)) == 64


def test_every_image_gets_drawn_over_time():
    labels = np.array([0] * 5 + [1] * 3 + [2])
    sampler = ClassBalancedSampler(labels)
    rng = np.random.default_rng(1)
    drawn = np.concatenate([sampler.sample(2, rng) for _ in range(200)])
    assert set(drawn) == set(range(9))


def test_unsorted_labels_and_determinism():
    labels = np.random.default_rng(0).integers(0, 100, 2000)
    a = ClassBalancedSampler(labels).sample(32, np.random.default_rng(5))
    b = ClassBalancedSampler(labels).sample(32, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(labels[a])) == 32


def test_errors():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ClassBalancedSampler(np.arange(3)).sample(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least one labelled row"):
        ClassBalancedSampler(np.array([], dtype=int))

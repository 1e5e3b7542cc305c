"""The ZSL metric: per-class means (not pooled accuracy), GZSL U/S/H, errors."""
import numpy as np
import pytest

from modeling_scegg.evaluation import ZSLAccuracy, harmonic_mean, mean_per_class_accuracy


def test_per_class_mean_differs_from_pooled_accuracy():
    references = np.array([0] * 8 + [1] * 2)
    predictions = np.array([0] * 8 + [0, 1])
    assert mean_per_class_accuracy(predictions, references) == pytest.approx((1.0 + 0.5) / 2)
    assert np.mean(predictions == references) == pytest.approx(0.9)


def test_gzsl_u_s_h():
    metric = ZSLAccuracy()
    refs = [0, 0, 1, 2, 2, 3]
    preds = [0, 1, 1, 2, 3, 0]  # seen {0,1}: 0.5 and 1.0 -> 0.75; unseen {2,3}: 0.5 and 0 -> 0.25
    out = metric.compute(predictions=preds, references=refs, unseen_class_ids=[2, 3])
    assert out["seen"] == pytest.approx(0.75)
    assert out["unseen"] == pytest.approx(0.25)
    assert out["harmonic_mean"] == pytest.approx(2 * 0.75 * 0.25 / 1.0)


def test_incremental_batches_match_one_shot():
    metric = ZSLAccuracy()
    metric.add_batch(predictions=[0, 1], references=[0, 0])
    metric.add_batch(predictions=[1], references=[1])
    assert metric.compute()["accuracy"] == pytest.approx(0.75)


def test_harmonic_mean_of_zeros_is_zero():
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        mean_per_class_accuracy(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match="none are unseen"):
        ZSLAccuracy().compute(predictions=[0], references=[0], unseen_class_ids=[3])

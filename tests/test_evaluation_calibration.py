"""Calibrated stacking: the seen-score offset is searched on held-out scores and undoes a bias
towards seen classes."""
import numpy as np
import pytest

from modeling_scegg.evaluation import calibrated_predictions, choose_seen_score_offset, zsl_scores

SEEN, UNSEEN = [0, 1, 2], [3, 4]


def _biased_scores(bias: float, n: int = 200, seed: int = 0):
    """Scores that rank the true class first, except that every seen class gets `bias` extra."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    scores = rng.normal(0, 0.3, (n, 5))
    scores[np.arange(n), labels] += 1.0
    scores[:, SEEN] += bias
    return scores, labels


def test_offset_undoes_a_seen_class_bias():
    scores, labels = _biased_scores(bias=2.0)
    raw = zsl_scores(scores.argmax(1), labels, scores.argmax(1), labels, UNSEEN)
    chosen = choose_seen_score_offset(scores, labels, SEEN, UNSEEN)
    assert raw["gzsl_unseen"] < 5.0 and raw["gzsl_seen"] > 90.0  # collapsed to the seen classes
    assert 1.0 < chosen["seen_score_offset"] < 3.0
    assert chosen["gzsl_h"] > 90 and chosen["uncalibrated_gzsl_h"] == pytest.approx(raw["gzsl_h"])
    predicted = calibrated_predictions(scores, SEEN, chosen["seen_score_offset"])
    calibrated = zsl_scores(predicted, labels, predicted, labels, UNSEEN)
    assert calibrated["gzsl_h"] == pytest.approx(chosen["gzsl_h"])


def test_unbiased_scores_keep_a_small_offset():
    scores, labels = _biased_scores(bias=0.0)
    chosen = choose_seen_score_offset(scores, labels, SEEN, UNSEEN)
    assert abs(chosen["seen_score_offset"]) < 0.5
    assert chosen["gzsl_h"] >= chosen["uncalibrated_gzsl_h"]


def test_zero_offset_is_the_plain_argmax():
    scores, _ = _biased_scores(bias=0.7)
    np.testing.assert_array_equal(calibrated_predictions(scores, SEEN, 0.0), scores.argmax(1))
    assert set(calibrated_predictions(scores, SEEN, 1e6)) <= set(UNSEEN)

"""Calibrated stacking (Chao et al., "An Empirical Study and Analysis of Generalized Zero-Shot
Learning for Object Recognition in the Wild", ECCV 2016).

A GZSL classifier trained on real seen features and synthetic unseen ones tends to call real
unseen images seen classes: they look more like the real features it saw than like the
generated ones. Calibrated stacking subtracts one constant, the seen-score offset (in the units
of the classifier's scores, not a percentage), from every seen-class score before the argmax.
The offset must be chosen without test data; the training pipeline picks it on the validation
view (val classes as pseudo-unseen) and the model applies it at inference
(`SCEGGConfig.seen_score_offset`, the same name and unit).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .metric import harmonic_mean

GRID_POINTS = 401


def calibrated_predictions(scores: np.ndarray, seen_class_ids: Sequence[int], seen_score_offset: float) -> np.ndarray:
    """argmax over classes of the scores (N, C) after subtracting `seen_score_offset` from the seen classes."""
    shifted = np.array(scores, dtype=np.float64, copy=True)
    shifted[:, np.asarray(seen_class_ids, dtype=np.int64)] -= seen_score_offset
    return shifted.argmax(axis=1)


def _per_class_accuracy(correct: np.ndarray, references: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Mean over `classes` of their per-class accuracy, for every row of `correct` (G, N)."""
    one_hot = (references[:, None] == classes[None, :]).astype(np.float64)
    return (correct @ one_hot / one_hot.sum(axis=0)).mean(axis=1)


def choose_seen_score_offset(
    scores: np.ndarray, references: np.ndarray, seen_class_ids: Sequence[int], unseen_class_ids: Sequence[int]
) -> dict[str, float]:
    """The seen-score offset that maximises GZSL H on (`scores` (N, C), `references` (N,)), which
    must be held-out data, never the test set. Every offset between two consecutive decision
    changes gives the same predictions, so the search runs over quantiles of the per-sample gaps
    between the best seen and the best unseen score (and 0, the uncalibrated classifier); ties go
    to the smallest |offset|. Returns `seen_score_offset` with GZSL U, S, H in percent (the keys
    of `zsl_scores`) at it, and H at 0 (`uncalibrated_gzsl_h`)."""
    scores, references = np.asarray(scores, dtype=np.float64), np.asarray(references)
    seen, unseen = np.asarray(seen_class_ids, dtype=np.int64), np.asarray(unseen_class_ids, dtype=np.int64)
    best_seen, best_unseen = scores[:, seen].argmax(axis=1), scores[:, unseen].argmax(axis=1)
    gap = scores[np.arange(len(scores)), seen[best_seen]] - scores[np.arange(len(scores)), unseen[best_unseen]]
    candidates = np.unique(np.concatenate([[0.0], np.quantile(gap, np.linspace(0, 1, GRID_POINTS)) - 1e-9]))
    candidates = candidates[np.argsort(np.abs(candidates), kind="stable")]
    chooses_seen = gap[None, :] > candidates[:, None]                                   # (G, N)
    predicted = np.where(chooses_seen, seen[best_seen][None, :], unseen[best_unseen][None, :])
    correct = predicted == references[None, :]
    is_unseen = np.isin(references, unseen)
    s_acc = _per_class_accuracy(correct[:, ~is_unseen], references[~is_unseen], np.unique(references[~is_unseen]))
    u_acc = _per_class_accuracy(correct[:, is_unseen], references[is_unseen], np.unique(references[is_unseen]))
    h = np.array([harmonic_mean(s, u) for s, u in zip(s_acc, u_acc)])
    best, zero = int(np.argmax(h)), int(np.flatnonzero(candidates == 0.0)[0])
    return {"seen_score_offset": float(candidates[best]), "gzsl_seen": 100 * float(s_acc[best]),
            "gzsl_unseen": 100 * float(u_acc[best]), "gzsl_h": 100 * float(h[best]),
            "uncalibrated_gzsl_h": 100 * float(h[zero])}

"""The ZSL metric as an `evaluate.Metric` shipped in the package.

`evaluate.load("accuracy")` fetches its script from the Hub and fails offline; more importantly
plain accuracy pools samples, so a few large classes dominate it. The ZSL protocol of Xian et al.
averages top-1 accuracy per class, and GZSL reports it separately for seen (S) and unseen (U)
test classes together with their harmonic mean H = 2SU / (S + U).
"""
from __future__ import annotations

from typing import Sequence

import datasets
import evaluate
import numpy as np

_CITATION = """\
@article{xian2018zero,
  title={Zero-Shot Learning - A Comprehensive Evaluation of the Good, the Bad and the Ugly},
  author={Xian, Yongqin and Lampert, Christoph H. and Schiele, Bernt and Akata, Zeynep},
  journal={IEEE TPAMI}, year={2019}
}
"""


def mean_per_class_accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    """Top-1 accuracy of each class present in `references`, averaged over those classes."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
    if references.size == 0:
        raise ValueError("no samples to evaluate")
    classes = np.unique(references)
    return float(np.mean([np.mean(predictions[references == c] == c) for c in classes]))


def harmonic_mean(seen: float, unseen: float) -> float:
    """H of GZSL; 0 when both accuracies are 0 rather than a division error."""
    return 0.0 if seen + unseen == 0 else 2 * seen * unseen / (seen + unseen)


class ZSLAccuracy(evaluate.Metric):
    """Per-class mean top-1 accuracy; with `unseen_class_ids`, also GZSL U, S and H (fractions).

    Pass predictions and references as class ids. Samples whose reference is an unseen class
    count towards U, the others towards S.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Per-class mean top-1 accuracy for (generalised) zero-shot learning.",
            citation=_CITATION,
            inputs_description="predictions and references: class ids (int).",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(
        self,
        predictions: Sequence[int],
        references: Sequence[int],
        unseen_class_ids: Sequence[int] | None = None,
    ) -> dict[str, float]:
        predictions, references = np.asarray(predictions), np.asarray(references)
        result = {"accuracy": mean_per_class_accuracy(predictions, references)}
        if unseen_class_ids is None:
            return result
        unseen = np.isin(references, np.asarray(unseen_class_ids))
        if unseen.all() or not unseen.any():
            missing = "seen" if unseen.all() else "unseen"
            raise ValueError(f"GZSL needs samples of both seen and unseen classes; none are {missing}")
        seen_acc = mean_per_class_accuracy(predictions[~unseen], references[~unseen])
        unseen_acc = mean_per_class_accuracy(predictions[unseen], references[unseen])
        result.update(seen=seen_acc, unseen=unseen_acc, harmonic_mean=harmonic_mean(seen_acc, unseen_acc))
        return result


def zsl_scores(
    gzsl_predictions: np.ndarray,
    gzsl_references: np.ndarray,
    czsl_predictions: np.ndarray,
    czsl_references: np.ndarray,
    unseen_class_ids: Sequence[int],
) -> dict[str, float]:
    """The four numbers every report carries, in percent: CZSL Acc and GZSL U / S / H."""
    metric = ZSLAccuracy()
    gz = metric.compute(predictions=gzsl_predictions, references=gzsl_references, unseen_class_ids=list(unseen_class_ids))
    cz = metric.compute(predictions=czsl_predictions, references=czsl_references)
    return {"czsl_acc": 100 * cz["accuracy"], "gzsl_unseen": 100 * gz["unseen"],
            "gzsl_seen": 100 * gz["seen"], "gzsl_h": 100 * gz["harmonic_mean"]}

"""Zero-shot evaluation: per-class mean accuracy, CZSL Acc and GZSL U / S / H."""
from .evaluate_model import evaluate_model, predict_split
from .metric import ZSLAccuracy, harmonic_mean, mean_per_class_accuracy

__all__ = ["ZSLAccuracy", "evaluate_model", "harmonic_mean", "mean_per_class_accuracy", "predict_split"]

"""Zero-shot evaluation: per-class mean accuracy, CZSL Acc and GZSL U / S / H."""
from .metric import ZSLAccuracy, harmonic_mean, mean_per_class_accuracy

__all__ = ["ZSLAccuracy", "harmonic_mean", "mean_per_class_accuracy"]

"""Zero-shot evaluation: per-class mean accuracy, CZSL Acc and GZSL U / S / H, calibrated stacking."""
from .calibration import calibrated_predictions, choose_seen_score_offset
from .evaluate_model import evaluate_model, predict_split
from .metric import ZSLAccuracy, harmonic_mean, mean_per_class_accuracy, zsl_scores

__all__ = ["ZSLAccuracy", "calibrated_predictions", "choose_seen_score_offset", "evaluate_model", "harmonic_mean",
           "mean_per_class_accuracy", "predict_split", "zsl_scores"]

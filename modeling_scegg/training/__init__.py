"""Accelerate-driven stage trainers and the pipeline that chains them."""
from .arguments import SCEGGTrainingArguments, parse_training_args
from .pipeline import load_data, run_pipeline, train_and_evaluate
from .selection import validation_view

__all__ = ["SCEGGTrainingArguments", "load_data", "parse_training_args", "run_pipeline", "train_and_evaluate",
           "validation_view"]

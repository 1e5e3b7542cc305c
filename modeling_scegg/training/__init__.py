"""Accelerate-driven stage trainers and the pipeline that chains them."""
from .arguments import SCEGGTrainingArguments, parse_training_args
from .pipeline import run_pipeline

__all__ = ["SCEGGTrainingArguments", "parse_training_args", "run_pipeline"]

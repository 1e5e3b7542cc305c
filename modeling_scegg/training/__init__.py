"""Accelerate-driven stage trainers and the pipeline that chains them.

The public stage API, in the order a run calls it (examples/train_stages.py reads it top to
bottom): `parse_training_args`, `load_data`, `choose_on_validation`, `start_run`, `run_stage1`,
`run_stage2`, `run_stage3`, `run_classifiers`, `finish_run`. `run_pipeline` is all of them.
"""
from .arguments import SCEGGTrainingArguments, parse_training_args
from .loading import load_data
from .pipeline import choose_on_validation, run_pipeline
from .runner import Run, finish_run, run_classifiers, run_stage1, run_stage2, run_stage3, start_run, train_and_evaluate
from .selection import validation_view
from .state import FeatureCache, Progress, RunPlan, SplitFeatures, ValidationChoice

__all__ = ["FeatureCache", "Progress", "Run", "RunPlan", "SCEGGTrainingArguments", "SplitFeatures", "ValidationChoice",
           "choose_on_validation", "finish_run", "load_data", "parse_training_args", "run_classifiers", "run_pipeline",
           "run_stage1", "run_stage2", "run_stage3", "start_run", "train_and_evaluate", "validation_view"]

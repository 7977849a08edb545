"""Retrieval validation: coverage, precision/recall@k, mAP@R, plots, filter checks."""
from .common import phase_task

validation_task = phase_task("validation")

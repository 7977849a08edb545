"""train: data-prep (and crops, when training on crops) -> teachers -> soft labels -> student ->
no-teacher student -> fine-tune -> calibration -> promotion."""
from pipeline_flows.dag import pipeline_flow

train = pipeline_flow("train")

"""data-prep: snapshot the dataset, audit it, split it."""
from pipeline_flows.dag import DatasetFormat, pipeline_flow  # noqa: F401  (DatasetFormat re-exported)

data_prep = pipeline_flow("data-prep")

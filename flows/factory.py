"""factory: the whole DAG, retrieval and training (nightly schedule and ad-hoc runs from the UI)."""
from pipeline_flows.dag import pipeline_flow

factory = pipeline_flow("factory")

"""embedding-study: data-prep -> crops -> one cell per (backbone, loss) -> the comparison report."""
from pipeline_flows.dag import pipeline_flow

embedding_study = pipeline_flow(
    "embedding-study", "Compare backbones and metric-learning losses on the crops; register the best head.")

"""embedding-study: data-prep -> crops -> one cell per (backbone, loss) -> the comparison report."""
from pipeline_flows.dag import pipeline_flow

embedding_study = pipeline_flow("embedding-study")

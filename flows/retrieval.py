"""retrieval: data-prep -> crops -> contexts -> embeddings -> index -> validation."""
from pipeline_flows.dag import pipeline_flow

retrieval = pipeline_flow("retrieval")

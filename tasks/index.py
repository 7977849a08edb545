"""FAISS index of the embeddings, with a self-check and recall against exact search."""
from .common import phase_task

index_task = phase_task("index")

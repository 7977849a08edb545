"""Image + text embeddings of the crops (CLIP or hybrid), sharded, cached per crop."""
from .common import phase_task

embeddings_task = phase_task("embeddings")

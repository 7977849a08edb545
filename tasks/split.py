"""Group-aware stratified split of the audited manifest."""
from .common import phase_task

split_task = phase_task("split")

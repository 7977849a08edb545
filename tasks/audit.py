"""Audit: decode and check every input, write manifest.parquet and quarantine.parquet."""
from .common import phase_task

audit_task = phase_task("audit")

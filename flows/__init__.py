"""Prefect flows (imported as `pipeline_flows`): wiring only, derived from the phase declarations.

Each flow names the phases it must produce (`pipeline.core.phases.FLOWS`); the phases upstream of
them are found by matching input names to phase names. Flow results are persisted as JSON.
"""

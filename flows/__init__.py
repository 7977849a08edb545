"""Prefect flows (imported as `pipeline_flows`): wiring only, derived from the declarations.

Every flow is listed in `pipeline.core.flow_table.FLOWS`, with the phases it must produce (the phases
upstream of them are found by matching input names to phase names) and its description; flow `x-y` is
`x_y` in module `x_y` here. Flow results are persisted as JSON.
"""

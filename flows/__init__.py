"""Prefect flows: wiring only (flows -> tasks -> pipeline)."""

"""Thin Prefect tasks around the library phases (one module per phase)."""

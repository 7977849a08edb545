"""core: what every stage shares. The config (pydantic sections, `training_sections` for what training
phases inherit from `train`), the phase framework (`phases`: PhaseSpec declarations, DAG order,
reference resolvers; `flow_table`: the one list of flows; `runner.execute_phase`), the content-addressed
artifact store with lineage and integrity checks, MLflow runs (`tracking`), run records, plan / diff /
gc, the device choice, seeded statistics (photo-cluster bootstrap), sharding and per-item caches.

Layer: the lowest (see `pipeline.LAYERS`); imports no other package of the library. Declares no phase;
`phases.STAGE_MODULES` lists the stage modules that do.
"""

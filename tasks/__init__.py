"""The Prefect task layer (imported as `pipeline_tasks`): one generic task per declared phase.

`context.py` holds what every module here shares (RunInfo, the store, the tracker, phase records);
`phase.py` turns each `PhaseSpec` of the library into a cached Prefect task, with `placement.py` (GPU
pool dispatch) and `shards.py` (Dask shards); `flowrun.py` opens and closes a flow run (MLflow parent
run, run record, summary, the training manifest). Imports go one way: context <- placement, shards <-
phase <- flowrun. Nothing here is per-phase code.
"""

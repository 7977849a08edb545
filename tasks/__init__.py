"""The Prefect task layer (imported as `pipeline_tasks`): one generic task per declared phase.

`phase.py` turns each `PhaseSpec` of the library into a cached Prefect task; `flowrun.py` opens and
closes a flow run (MLflow parent run, run record, summary). Nothing here is per-phase code.
"""

"""app: the application over the library. The `pipeline` command line (`cli` with `cli_app`,
`cli_options`, `cli_flows` and one module per command group), the local services (`pipeline up`:
Prefect server, MLflow, workers, Dask, Postgres), deployments (`deploy`, `prefect_yaml` from the flow
table), the search and runs app (`webapp/`).

Layer: the top (see `pipeline.LAYERS`); may import every library package. Prefect is imported only
where a command talks to it.
"""

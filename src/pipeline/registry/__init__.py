"""The registry stage: everything that talks to the MLflow model registry and answers with a registered model.

Versions and aliases (`versions`), the promotion phase (`phases`, declared here) with its gate
(`gate`), comparison set and kill-safe marks (`promote`, `promotion`), `load_model` / `predict_images`
on a registered model (`predict`), the pyfunc (`pyfunc`), the training manifest (`training_manifest`),
export's registry glue (`export_io`), the embedding study's heads (`heads`) and the store + registry
check (`verify`). MLflow is imported only here and in `core.tracking`.

May import: core, data, models, retrieval, training. Imported by: study, export, monitor, app.
"""

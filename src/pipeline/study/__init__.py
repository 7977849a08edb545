"""The embedding study: metric-learning cells (backbone x loss x stage), their evaluation and the comparison.

`cell` trains and evaluates one cell, `train` holds the staged fine-tuning and class-balanced batches,
`evaluate` the k-NN retrieval metrics and plots on val / test, `compare` the table over every cell and
the best head, `phases` declares the `embedding_cell` family and `embedding_study`. The losses it shares
with the nightly embedding head live in `retrieval.metric_losses`; registering the best head is
`registry.heads`.

May import: core, data, models, retrieval, training, registry. Imported by: app (and the flow layer).
"""

"""monitor: between runs, the drift report (reference run vs current run: data, embeddings,
predictions) and the review queue (the photos without labels the champion is least sure of, as a
LabelMe folder); `shift` makes shifted datasets for `pipeline shift-data`. Library code: no Prefect.

Layer: above study (see `pipeline.LAYERS`); may import every library package but app. Phases
(declared in `monitor.phases`): drift, review.
"""

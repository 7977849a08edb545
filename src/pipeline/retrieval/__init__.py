"""retrieval: a split dataset to a searchable index and its honest figures.

The detector is decided once per run (`detect_choice`) and built from a table (`detect`); `crops`
cuts vehicle, grid and damage crops (`crop_item`; `crop_rule` is the one input path a model trained on
crops keeps from training to the browser), `contexts` writes each crop's text, `embedder` (a table of
backends) and `embeddings` make the vectors, `head` + `adopt` the nightly embedding head on frozen
features (losses shared with the study in `metric_losses`), `index` + `coarse` the FAISS index,
`retrieve` + `rerank` the search, `validate` (+ plots, report, stats) the figures.

Layer: above core, data, demo and models (see `pipeline.LAYERS`); may import those. Phases (declared
in `retrieval.phases`): crops, contexts, embeddings, embedding_head, index, validation.
"""

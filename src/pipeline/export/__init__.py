"""export: a calibrated classifier to ONNX (FP32 / FP16 / INT8) and TF.js (FP32 / FP16 / uint8) variants,
each admitted by the equivalence gate against torch on inputs like its training data.

`variants` runs the phase's work, `onnx_export` and `int8` the ONNX side, `tf_worker` the TF side (in
.venv-export), `runtimes` / `browser` run the variants (onnxruntime, Node, Chromium), `gate` compares,
`cards` describe, `inputs` picks the gate's inputs, `web/` is the served page.

Layer: above registry (see `pipeline.LAYERS`); imports core, data, models, retrieval and training.
Phase (declared in `export.phases`): export.
"""

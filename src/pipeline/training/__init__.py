"""training: train and calibrate a classifier.

`items` builds the training items (crops or whole images) from the split, `augment` the transforms,
`budget` the step budget, `probe` the linear-probe start, `loop` the fit, `trainer` what every training
phase shares (loaders, scoring, model dir, report), `teacher` / `distill` the recipes, `calibrate`
(+ `calibration_stats`, `calibration_report`) temperature scaling and thresholds, `inference` a saved
model dir over images (calibration, promotion and prediction all use it), `evaluate` / `compare` the
figures with intervals.

Layer: above core, data, demo, models and retrieval (see `pipeline.LAYERS`); may import those. Phases
(declared in `training.phases`): teacher, teacher_regional, soft_labels, student, student_no_teacher,
finetune, calibration.
"""

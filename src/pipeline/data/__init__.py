"""data: a raw dataset (LabelMe, COCO, JSONL manifest, class folders) to a clean, split manifest.

`adapters/` read each format, `images` decodes (bounded in worker processes by `bounded`), `audit`
checks every file and quarantines bad ones with a reason, `near_duplicates` groups look-alikes, `split`
makes the group-aware stratified split, `dataset` snapshots the raw files.

Layer: above core (see `pipeline.LAYERS`); may import core only. Phases (declared in `data.phases`):
dataset, audit, split.
"""

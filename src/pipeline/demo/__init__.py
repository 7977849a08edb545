"""demo: the synthetic LabelMe dataset generator behind `pipeline demo` and the tests (cars drawn as
scenes with marks, zones and damage polygons, in the users' file naming).

Layer: above core and data (see `pipeline.LAYERS`); may import core and data. Declares no phase.
"""

"""Vehicle detection and crops (grid crops of clean surfaces, damage crops from polygons)."""
from .common import phase_task

crops_task = phase_task("crops")

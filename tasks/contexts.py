"""Text contexts of crops (zone, part, damage types, spatial pattern)."""
from .common import phase_task

contexts_task = phase_task("contexts")

"""The library's error types. A `PipelineError` is systemic and never retried by a task: the
message says what to do. Transient errors (I/O, resources) are any other exception."""
from __future__ import annotations


class PipelineError(Exception):
    """A systemic problem a retry cannot fix (configuration, missing model, unusable dataset)."""


class ConfigError(PipelineError, ValueError):
    """A configuration problem; raised before any work starts where possible."""


class ModelUnavailable(ConfigError):
    """A model's weights cannot be had (offline, no local path, random init not allowed)."""


class DatasetError(PipelineError):
    """The dataset holds nothing usable (e.g. every file quarantined, or the wrong format)."""

"""Files that ship inside the package (pipeline/resources/): the prefect.yaml template and the
configs (configs/default.yaml, configs/demo.yaml). Found through importlib.resources, so they are
there for a wheel install as for an editable checkout."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

PREFECT_YAML = "prefect.yaml"
DEMO_CONFIG = "configs/demo.yaml"
DEFAULT_CONFIG = "configs/default.yaml"


def packaged_file(relative: str) -> Path:
    """The path of resources/<relative> in the installed package; FileNotFoundError if absent."""
    path = Path(str(resources.files("pipeline").joinpath("resources", *relative.split("/"))))
    if not path.is_file():
        raise FileNotFoundError(f"{relative} is not in the installed package (looked at {path}); "
                                "reinstall vdamage-pipeline")
    return path

"""The controller's API as an OpenAPI 3 document, served at `GET /openapi.json`.

The document is written by hand next to this module (`openapi.yaml`), where it reads
best; it is loaded once and carries the package's version.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

from faas_supervisor import __version__


@functools.cache
def document() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("openapi.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    data["info"]["version"] = __version__
    return data

"""Optional dependencies: imported when a configured backend needs them, with an error naming
the ``pip install`` that brings them."""

from __future__ import annotations

import importlib
from types import ModuleType

from meterline.domain.errors import ConfigError


def import_extra(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise ``ConfigError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"this configuration needs the Python package {module.split('.')[0]!r}, which is not installed;"
            f" run: pip install 'meterline[{extra}]'"
        ) from exc

"""Lazy imports of the ``client`` extra's optional packages, with a one-line error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'mirage-ray[client]'"


class ClientError(RuntimeError):
    """An expected failure of the desktop client: one line that says what went wrong and what to do."""


class MissingExtraError(ClientError):
    """An optional package of the ``client`` extra is not installed."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature`` or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:  # OSError: the package is there, its native library is not
        raise MissingExtraError(
            f"{feature} needs the Python package {module!r} ({exc}); install the client extra: {INSTALL_HINT}"
        ) from None


def available(module: str) -> bool:
    """Whether ``module`` imports (a missing optional package, or one whose native library is absent)."""
    try:
        importlib.import_module(module)
    except (ImportError, OSError):
        return False
    return True

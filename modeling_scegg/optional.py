"""Optional dependencies: what only some paths need is an extra of the package, imported where it
is used, and its absence is said as a user's mistake with the command that fixes it.

Extras (pyproject.toml): ``plots`` (matplotlib, scikit-learn: training's plots/, ``scegg plot``)
and ``hdf5`` (h5py: the xlsa17 benchmark layout's region feature files); ``train`` is both. Predicting needs neither.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserError


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """`module`, or a UserError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise missing_extra(error, extra, purpose) from None


def missing_extra(error: ImportError, extra: str, purpose: str) -> UserError:
    """The UserError for an ImportError of an optional dependency."""
    return UserError(f"{purpose} needs {error.name or 'a package'} ({error}), which is not installed",
                     f"pip install 'scegg[{extra}]'" + (" (or train without plots: --plots false)" if extra == "plots" else ""))


def require_plots() -> None:
    """Fail at the start of a run, not after it, when its plots could not be drawn."""
    importlib.import_module(f"{__package__}.visualization")


__all__ = ["import_optional", "missing_extra", "require_plots"]

"""Where the shipped presets (hub_configs/*.json) are found: installed beside the package, or at
the top of a source checkout. Kept free of heavy imports, so `scegg --help` can list them at once."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
PRESET_FOLDERS = (_HERE / "hub_configs", _HERE.parent / "hub_configs")


def shipped_presets() -> list[str]:
    """Names of the presets that ship with the package."""
    return sorted({p.stem for folder in PRESET_FOLDERS if folder.is_dir() for p in folder.glob("*.json")})

"""Files of a run directory, written to a temporary name and renamed so none is ever half-written."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_text", "write_json", "save_torch"]


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` (:func:`write_text`: never half-written)."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)

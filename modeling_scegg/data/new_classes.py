"""The class file of `scegg add-classes`: classes nobody labelled, described by their attributes.

A CSV with a header row ``class_name,<attribute 1>,...,<attribute A>`` and one row per new class,
the A values in the attribute space of the dataset the model was trained on (any scale: the model
L2-normalises each row, as training did)::

    class_name,has_bill_shape::curved,has_wing_color::blue,...
    blue_jay,3.1,86.0,...
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .semantics import attribute_values


def read_new_classes(path: str | os.PathLike, num_attributes: int) -> tuple[list[str], np.ndarray]:
    """(class names, (n, A) float32 attributes), checked row by row against the model's A."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if not rows or rows[0][0].strip() != "class_name" or len(rows[0]) != num_attributes + 1:
        got = len(rows[0]) - 1 if rows else 0
        raise ValueError(f"{path}: the header must be 'class_name' and the model's {num_attributes} attribute columns, "
                         f"got {got} attribute columns")
    names, values = [], []
    for line, row in enumerate(rows[1:], start=2):
        name = row[0].strip()
        if len(row) != num_attributes + 1 or not name:
            raise ValueError(f"{path}, line {line}: expected a class name and {num_attributes} values, got {row[:3]}...")
        values.append(attribute_values(row[1:], f"{path}, line {line}", name))
        names.append(name)
    if not names:
        raise ValueError(f"{path} lists no classes")
    return names, np.array(values, dtype=np.float32)

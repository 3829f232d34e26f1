"""Named model shapes (models/shapes.json): exact dimensions of known checkpoints."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path


def models_dir() -> Path:
    from .gpu import data_dir
    return data_dir("models", "shapes.json")


@lru_cache(maxsize=None)
def load_shapes() -> dict:
    data = json.loads((models_dir() / "shapes.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def get_shape(name: str) -> dict:
    shapes = load_shapes()
    if name not in shapes:
        raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(shapes)}")
    return shapes[name]

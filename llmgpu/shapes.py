"""Named model shapes (models/shapes.json): exact dimensions of known checkpoints."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path


def models_dir() -> Path:
    """models/ in a source checkout, llmgpu/models in an installed wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "models", here / "models"):
        if (cand / "shapes.json").exists():
            return cand
    from importlib.resources import files
    return Path(str(files("llmgpu.models")))


@lru_cache(maxsize=None)
def load_shapes() -> dict:
    data = json.loads((models_dir() / "shapes.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def get_shape(name: str) -> dict:
    shapes = load_shapes()
    if name not in shapes:
        raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(shapes)}")
    return shapes[name]

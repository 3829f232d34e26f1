"""Argument checks shared by the Python API (:mod:`llmgpu.api`) and :class:`~llmgpu.chat.Chat`.

Each raises at the call, before any work, with the argument's name, what it must be and what it got,
instead of letting a wrong type surface as a Python error from deep inside (or, worse, be silently
coerced: ``logits([1.7])`` used to read token 1).
"""
from __future__ import annotations

import os

import numpy as np


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def positive_int(name: str, v) -> int:
    if not is_int(v) or v < 1:
        raise (ValueError if is_int(v) else TypeError)(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def optional_str(name: str, v) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError(f"{name} must be a str or None, got {type(v).__name__}")
    return v


def flag(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return v


def text(name: str, v) -> str:
    """A str the tokenizer can take: valid Unicode (no lone surrogates, which bytes decoded with
    ``surrogateescape`` leave behind)."""
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a str, got {type(v).__name__}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode (a lone surrogate at index {e.start}, as left by bytes "
                         "that are not UTF-8); decode the bytes with errors='replace' first") from None
    return v


def stop_strings(v) -> list[str]:
    """``stop``: None, a str or a list/tuple of str."""
    items = [] if v is None else [v] if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise TypeError(f"stop must be a str, a list of str or None, got {v!r}")
    return list(items)


def messages(v) -> list[dict]:
    """A conversation: a list of ``{"role": str, "content": str}`` (other keys pass to the template)."""
    if not isinstance(v, list) or not v:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"message {i} must be a dict with a 'role' str, got {m!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} ({m['role']}) needs a 'content' str, got {m.get('content')!r}")
        text(f"message {i} content", m["content"])
    return v


def token_ids(v) -> list[int]:
    """A sequence of integer token ids (numpy integers included; floats and bools are refused)."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise TypeError(f"token_ids must be a sequence of integers, got {type(v).__name__}")
    ids = list(v.tolist() if isinstance(v, np.ndarray) else v)
    if bad := [t for t in ids if not is_int(t)]:
        raise TypeError(f"token ids must be integers, got {bad[0]!r} ({type(bad[0]).__name__})")
    return [int(t) for t in ids]


def model_source(v) -> None:
    if v is not None and not isinstance(v, (str, os.PathLike)):
        raise TypeError(f"model must be a path, a hub id or None, got {type(v).__name__}")

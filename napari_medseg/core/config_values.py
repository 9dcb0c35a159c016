"""Checking the values of a config read from JSON (a checkpoint, a config file, the CLI) against their kind.

``ModelConfig.from_dict`` and ``TrainConfig`` both validate field by field with ``coerce``: a value of the wrong
type is refused with one sentence naming the config and the field (never a ``TypeError`` deep in training), and
numbers and lists come back as the dataclass stores them (``float``, tuples). ``kind_of(default)`` gives the
kind of a field from its default value.

Kinds: ``bool``, ``int``, ``float`` (an int is accepted), ``str``, ``ints`` (a non-empty list of integers),
``int_or_ints`` (one integer or such a list), ``floats2`` (a list of two numbers). ``True`` is never an integer.
"""

from __future__ import annotations

from typing import Any

from napari_medseg.core.errors import MedsegError

KIND_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
              "ints": "a list of integers", "int_or_ints": "an integer or a list of integers",
              "floats2": "a list of two numbers"}


def kind_of(default: Any) -> str:
    """The kind of a field whose default is ``default`` (a tuple default: a list of integers)."""
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, tuple):
        return "ints"
    raise TypeError(f"no config value kind for a default of type {type(default).__name__}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def coerce(what: str, name: str, v: Any, kind: str, nullable: bool = False) -> Any:
    """``v`` as field ``name`` of kind ``kind`` stores it, or ``MedsegError`` ("<what> 'name' must be ...").

    ``what`` names the config in the message (``"training config"``); ``nullable`` lets ``None`` through.
    """
    if v is None:
        if nullable:
            return None
        raise MedsegError(f"{what} {name!r} must not be null")
    ok: bool
    if kind == "bool":
        ok, out = isinstance(v, bool), v
    elif kind == "int":
        ok, out = _is_int(v), v
    elif kind == "float":
        ok = _is_number(v)
        out = float(v) if ok else v
    elif kind == "str":
        ok, out = isinstance(v, str), v
    elif kind in ("ints", "int_or_ints"):
        if kind == "int_or_ints" and _is_int(v):
            v = [v]
        ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(i) for i in v)
        out = tuple(int(i) for i in v) if ok else v
    elif kind == "floats2":
        ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(i) for i in v)
        out = (float(v[0]), float(v[1])) if ok else v
    else:
        raise ValueError(f"unknown config value kind {kind!r}")
    if not ok:
        raise MedsegError(f"{what} {name!r} must be {KIND_WORDS[kind]}, got {v!r}")
    return out

"""Building validated dataclasses from nested mappings (YAML), with errors that name the key path.

A recipe is a tree of dataclasses. :func:`build` walks a mapping against a dataclass's fields,
checks each value's type against the field annotation, recurses into nested dataclasses, and
turns every problem (unknown key, wrong type, a ``__post_init__`` ValueError) into one
:class:`RecipeError` that says which key, in which file, and what is allowed. A ``__post_init__``
error with a ``field`` attribute (the validated dataclasses of this package set it) names that
field, so the error names the full key path (``data.geometry.min_frames``), not only its section.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

__all__ = ["RecipeError", "build", "to_dict", "set_by_path"]


class RecipeError(ValueError):
    """A recipe (or an override) is malformed. The message names the key path and the source."""


def _where(path: str, source: str) -> str:
    return f"'{path}' in {source}" if path else source


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', origin)}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str, source: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints widened to float where asked)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):  # its own error names the inner key
            return _convert(inner[0], value, path, source)
        for arg in args:
            try:
                return _convert(arg, value, path, source)
            except RecipeError:
                continue
        raise RecipeError(
            f"{_where(path, source)}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    if tp is type(None):
        if value is None:
            return None
        raise RecipeError(f"{_where(path, source)}: expected null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, source=source, path=path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(
                f"{_where(path, source)}: expected a list ({_type_name(tp)}), got {value!r}"
            )
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{_where(path, source)}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise RecipeError(
        f"{_where(path, source)}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )


def build(cls: type, mapping: Any, *, source: str = "<recipe>", path: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``mapping``, validating keys and types recursively.

    Missing keys take the field defaults. Raises :class:`RecipeError` naming ``path.key`` and
    ``source`` for unknown keys (listing the known ones), wrong types, and ``__post_init__``
    ValueErrors.
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise RecipeError(f"{_where(path, source)}: expected a mapping of keys, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in mapping if k not in fields]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise RecipeError(
            f"unknown key '{key}' in {source}; known keys{' of ' + repr(path) if path else ''}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in mapping.items():
        sub = f"{path}.{name}" if path else name
        kwargs[name] = _convert(hints[name], value, sub, source)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        key = f"{path}.{missing[0]}" if path else missing[0]
        raise RecipeError(f"{source}: required key '{key}' is missing")
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{_where(_field_path(path, getattr(err, 'field', None), fields), source)}: {err}") from err


def _field_path(path: str, name: Any, fields: dict) -> str:
    """``path.name`` when ``name`` is one of the dataclass's fields, else ``path``."""
    if name not in fields:
        return path
    return f"{path}.{name}" if path else name


def to_dict(obj: Any) -> Any:
    """A dataclass tree back to plain dicts/lists (for logging and for saving the resolved recipe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_by_path(tree: dict, dotted: str, value: Any, *, source: str) -> None:
    """``tree['a']['b'] = value`` for ``dotted == 'a.b'``, creating intermediate mappings."""
    keys = dotted.split(".")
    if not all(keys):
        raise RecipeError(f"{source}: bad key path {dotted!r} (expected dotted keys like training.max_steps)")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            parent = ".".join(keys[: i + 1])
            raise RecipeError(f"{source}: cannot set {dotted!r}: '{parent}' is {child!r}, not a mapping")
        node = child
    node[keys[-1]] = value

"""Typed YAML: build frozen dataclasses from parsed YAML by their type annotations.

Every key is required and checked against its annotation (numbers, literals, unions,
lists, mappings, nested dataclasses, and ``Annotated[str, Registry]`` names); an unknown
key fails with the closest allowed one. Range checks live in each dataclass's
``__post_init__`` through :func:`check`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Annotated, Any, Literal, Union

from abcd.core.errors import UserError
from abcd.core.registry import ChoiceError, Registry


class ParamsError(UserError, ValueError):
    """A params file that does not match the schema."""


def check(ok: bool, key: str, expected: str) -> None:
    if not ok:
        raise ParamsError(f"params: '{key}' must be {expected}")


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list ({tp})"
    if origin is dict:
        return f"a mapping ({tp})"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it in the annotated type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is Annotated:
        # A registry-backed choice: the base type first, then the name against the registry.
        base, *extras = typing.get_args(tp)
        value = _convert(base, value, key)
        for registry in extras:
            if isinstance(registry, Registry):
                try:
                    registry.check(value, key)
                except ChoiceError as err:
                    raise ParamsError(str(err)) from None
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(option, value, key)
            except ParamsError:
                continue
    elif origin is dict:
        key_type, item = typing.get_args(tp)
        if isinstance(value, dict):
            return {_convert(key_type, k, key): _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    elif tp is type(None):
        if value is None:
            return None
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:
        items = typing.get_args(tp)
        if isinstance(value, (list, tuple)) and len(value) == len(items):
            return tuple(_convert(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(items, value)))
    elif tp is float:
        # YAML reads "1e-3" as a string; accept it as a number the way users expect.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif _is_scalar(tp, value):
        return value
    raise ParamsError(f"params: '{key}' must be {_type_name(tp)}, got {value!r}")


def _is_scalar(tp: Any, value: Any) -> bool:
    """Exact scalar match: a bool is not an int here, and strings must be non-empty."""
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str) and bool(value)
    return tp is bool and isinstance(value, bool)


def build(cls: type, data: Any, key: str) -> Any:
    where = f"'{key}'" if key else "the top level"
    if not isinstance(data, dict):
        raise ParamsError(f"params: {where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    allowed = [f.name for f in dataclasses.fields(cls)]
    for name in data:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            full = f"{key}.{name}" if key else str(name)
            raise ParamsError(f"params: unknown key '{full}'{hint}; allowed keys in {where}: {', '.join(allowed)}")
    missing = [name for name in allowed if name not in data]
    if missing:
        raise ParamsError(f"params: {where} is missing key(s): {', '.join(missing)}")
    values = {name: _convert(hints[name], data[name], f"{key}.{name}" if key else name) for name in allowed}
    return cls(**values)

"""The schema machinery of the YAML files: pydantic models, and their errors as one line.

Pydantic validates: every key required (a model field without a default), unknown keys
refused (``extra="forbid"``), strict types (a bool is not a number, 2.5 is not an integer),
ranges as ``Field`` constraints, rules across keys as validators that call :func:`check`.
What pydantic does not do is the message: its own is several lines per error in its words.
:func:`build` turns the first error into one line that names the key path, the value and
what is allowed: the field's ``description`` for a range or rule, its type for a wrong type,
the closest allowed key for an unknown one.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from abcd.core.errors import UserError

M = TypeVar("M", bound=BaseModel)
# Errors of a value of the right type outside its field's constraints: described by the field.
_CONSTRAINTS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long"}
_CONSTRAINTS |= {"string_pattern_mismatch"}


class ParamsError(UserError, ValueError):
    """A params file that does not match the schema."""


class Schema(BaseModel):
    """A section of a YAML file: frozen, every key required, no unknown keys, no empty strings."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, str_min_length=1)


def _number(value: Any) -> Any:
    # PyYAML (YAML 1.1) reads 1e-3, without a dot, as a string: take it as the number users meant.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


# A float field: strict (no bools), but an int or a numeric string is the number.
Number = Annotated[float, BeforeValidator(_number)]
# Two numbers: YAML has lists, not tuples.
Pair = Annotated[tuple[Number, Number], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]


def check(ok: bool, expected: str) -> None:
    """In a validator: unless ``ok``, fail with "'<its key>' must be <expected>"."""
    if not ok:
        raise PydanticCustomError("rule", "{expected}", {"expected": expected})


def build(cls: type[M], data: Any, key: str = "", context: dict[str, Any] | None = None) -> M:
    """Validate ``data`` (the section at ``key``, "" for a whole file) as ``cls``; one-line :class:`ParamsError`."""
    try:
        return cls.model_validate(data, context=context)
    except ValidationError as err:
        prefix = tuple(key.split(".")) if key else ()
        raise ParamsError(f"params: {_explain(err.errors(), cls, data, prefix)}") from None


def _explain(errors: list[ErrorDetails], cls: type, data: Any, prefix: tuple = ()) -> str:
    """One line for the first error: an unknown key first (it may explain a missing one), then a missing one."""
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    missing = [e for e in errors if e["type"] == "missing" and isinstance(e["loc"][-1], str)]
    if extra:
        *parent, name = extra[0]["loc"]
        allowed = list(_unwrap(_walk(cls, tuple(parent))[1])[0].model_fields)
        # Compared case-folded: 'Lr' is most likely 'lr', which difflib alone scores too low to suggest.
        folded = {key.lower(): key for key in allowed}
        close = difflib.get_close_matches(str(name).lower(), folded, n=1)
        hint = f" (did you mean '{folded[close[0]]}'?)" if close else ""
        where = _where(prefix + tuple(parent))
        return f"unknown key {_key(prefix + extra[0]['loc'])}{hint}; allowed keys in {where}: {', '.join(allowed)}"
    if missing:
        parent = missing[0]["loc"][:-1]
        names = [str(e["loc"][-1]) for e in missing if e["loc"][:-1] == parent]
        return f"{_where(prefix + parent)} is missing key(s): {', '.join(names)}"
    error = errors[0]
    depth, tp, field_depth, field = _walk(cls, error["loc"])
    loc = error["loc"][:depth]
    if error["type"] == "choice":  # a registry's own message names the value and the choices
        return f"{_key(prefix + loc)}: {error['msg']}"
    if error["type"] == "rule":
        return f"{_key(prefix + loc)} must be {error['msg']}{_got(data, loc)}"
    # (A "missing" error left is a list item: a tuple too short, as "too_short" is a list.)
    if error["type"] in _CONSTRAINTS | {"missing"} and field is not None and field.description:
        loc = error["loc"][:field_depth]  # e.g. an item of a list: described, and shown, as the whole list
        return f"{_key(prefix + loc)} must be {field.description}{_got(data, loc)}"
    return f"{_where(prefix + loc)} must be {_type_name(tp)}, got {error['input']!r}"


def _walk(cls: type, loc: tuple) -> tuple[int, Any, int, FieldInfo | None]:
    """Follow ``loc`` through the schema: (how many of its parts name keys, the type there,
    how many lead to the innermost field with constraints, that field). Parts past a union name its branches."""
    tp, depth, field_depth, field = cls, 0, 0, None
    for i, part in enumerate(loc):
        base, _ = _unwrap(tp)
        origin, args = typing.get_origin(base), typing.get_args(base)
        if isinstance(base, type) and issubclass(base, BaseModel) and part in base.model_fields:
            field = base.model_fields[part]
            tp, field_depth = field.annotation, depth + 1
        elif origin is dict and part != "[key]":
            tp = args[0] if loc[i + 1 : i + 2] == ("[key]",) else args[1]
        elif origin is list and isinstance(part, int):
            tp = args[0]
        elif origin is tuple and isinstance(part, int) and part < len(args):
            tp = args[part]
        else:
            break
        depth += 1
        inner = [m for m in _unwrap(tp)[1] if isinstance(m, FieldInfo) and m.description]
        if inner:  # a constrained item type, e.g. a dict's Annotated[list[...], Field(min_length=1, ...)]
            field, field_depth = inner[-1], depth
    return depth, tp, field_depth, field


def _unwrap(tp: Any) -> tuple[Any, tuple]:
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        return base, tuple(meta)
    return tp, ()


def _got(data: Any, loc: tuple) -> str:
    """ ", got <value>" for a plain value at ``loc`` in the input; mappings are left out (too long for one line)."""
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return ""
    plain = (str, int, float, bool, type(None))
    if isinstance(data, plain) or (isinstance(data, list) and all(isinstance(v, plain) for v in data)):
        return f", got {data!r}"
    return ""


def _key(loc: tuple) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).removeprefix(".")
    return f"'{text}'"


def _where(loc: tuple) -> str:
    return _key(loc) if loc else "the top level"


def _type_name(tp: Any) -> str:
    tp, _ = _unwrap(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a mapping"
    names = {int: "an integer", float: "a number", str: "a non-empty string", bool: "true/false", type(None): "null"}
    return names.get(tp, str(tp))


def _plural(tp: Any) -> str:
    tp, _ = _unwrap(tp)
    names = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
    return names.get(tp, "mappings" if isinstance(tp, type) and issubclass(tp, BaseModel) else "values")


def read_yaml(path: str | Path, what: str, hint: str = "", error: type[Exception] = UserError) -> Any:
    """The YAML file ``path`` parsed, or ``error`` saying "<what>: file not found" or "not valid YAML"."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what}: file not found: {path}" + (f" ({hint})" if hint else ""))
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise error(f"{what}: {path} is not valid YAML: {err}") from None


def load_file(cls: type[M], path: str | Path, what: str, hint: str, error: type[Exception] = UserError) -> M:
    """A YAML file other than params.yaml validated as ``cls``: every error in one line naming the file."""
    data = read_yaml(path, what, hint, error)
    try:
        return build(cls, data)
    except ParamsError as err:
        # The schema's messages start "params: "; this file is not params.yaml, so say which file it is.
        raise error(f"{what}: {str(err).removeprefix('params: ')} (in {path})") from None

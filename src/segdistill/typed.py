"""Typed dataclasses from plain data (YAML, flags), and back to commented YAML.

Generic over any dataclass: ``build`` checks a nested mapping against the annotations (unknown keys
get a "did you mean"), converts the few safe cases (int -> float, YAML numbers read as strings) and
raises a one-line ``ConfigError`` naming the dotted key otherwise. ``config.py`` holds the schema.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import types
import typing
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError


def suggest(key: str, options: list[str]) -> str:
    """"; did you mean 'x'?" for the closest option, else the list of valid ones."""
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(options))}"


def build(cls: type, data: Any, where: str = "config") -> Any:
    """An instance of the dataclass ``cls`` from a mapping (or another instance), every value checked."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)  # type: ignore[arg-type]
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            # repr: a key from a file may hold a newline, and errors stay one line.
            raise ConfigError(f"{where}: unknown key {str(key)!r}{suggest(str(key), names)}")
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}" if where != "config" else key)
    return cls(**kwargs)


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few safe cases (int -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is Literal:
        return _coerce_literal(value, typing.get_args(tp), where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, where)
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    for option in typing.get_args(tp):
        try:
            return coerce(value, option, where)
        except ConfigError:
            pass
    raise ConfigError(f"{where}: {value!r} is not a valid value (expected {type_name(tp)})")


def _coerce_literal(value: Any, choices: tuple[Any, ...], where: str) -> Any:
    if isinstance(value, bool) and value in (True, False) and "true" in choices:
        return "true" if value else "false"
    if isinstance(value, bool) and "off" in choices:  # YAML reads a bare off as false
        return "auto" if value else "off"
    if value in choices:
        return value
    raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")


def _coerce_scalar(value: Any, tp: type, where: str) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if number:
            return float(value)
        if isinstance(value, str):
            # PyYAML reads 3e-3 (no dot) as a string; accept it as the number it means.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, str):
        return value
    if number:
        return str(value)  # YAML reads file stems such as 24 as numbers
    raise ConfigError(f"{where}: expected a string, got {value!r}")


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.epochs=10)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def override(data: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a nested dict of the
    dataclass ``cls``'s keys; an unknown key is an error with a suggestion."""
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        tp: Any = cls
        for depth, part in enumerate(path):
            hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else None
            if hints is not None and part not in hints:
                prefix = ".".join(path[:depth])
                where = f"override '{text}'" + (f" (in {prefix})" if prefix else "")
                raise ConfigError(f"{where}: unknown key '{part}'{suggest(part, list(hints))}")
            if depth == len(path) - 1:
                node[part] = value
                break
            child = node.get(part)
            if not isinstance(child, dict):
                child = dataclasses.asdict(child) if dataclasses.is_dataclass(child) else {}
                node[part] = child
            node = child
            tp = hints[part] if hints is not None else Any
    return data


def type_name(tp: Any) -> str:
    """An annotation as a user reads it: ``int | None`` -> "int or null"."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(type_name(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(c) for c in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def leaf_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the values in a nested dict ({"model": {"args": {"base": 8}}} -> model.args.base)."""
    keys: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys |= leaf_keys(value, path + ".")
        elif dataclasses.is_dataclass(value):
            keys |= leaf_keys(dataclasses.asdict(value), path + ".")  # type: ignore[arg-type]
        else:
            keys.add(path)
    return keys


def leaf_values(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The values of a nested dict by dotted path."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(leaf_values(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def commented_yaml(obj: Any, header: str) -> str:
    """The dataclass instance ``obj`` as YAML, each key followed by the comment from its docstring."""
    lines = [header, ""]

    def emit(node: Any, indent: int) -> None:
        docs = field_docs(type(node))
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            pad = "  " * indent
            comment = f"  # {docs[f.name]}" if f.name in docs else ""
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:{comment}")
                emit(value, indent + 1)
            else:
                dumped = yaml.safe_dump({f.name: value}, default_flow_style=True, width=1000).strip()
                dumped = dumped[1:-1] if dumped.startswith("{") else dumped
                lines.append(f"{pad}{dumped}{comment}")

    emit(obj, 0)
    return "\n".join(lines) + "\n"


def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings (the string literal under a field) read from the class source."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # pragma: no cover - source unavailable (frozen app)
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs

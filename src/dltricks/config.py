"""Typed dataclass configs: YAML in, dotted-key overrides, strict checking.

A config is a (nested) dataclass with type hints. :func:`from_dict` builds one from plain data and
rejects unknown keys (naming the closest valid ones) and values of the wrong type (naming the key and
the expected type); :func:`apply_overrides` applies ``key.sub=value`` strings such as
``optim.lr=0.1`` from the command line, parsing each value as YAML. Field metadata may carry a
``check`` callable for range checks and a ``help`` string used by ``--help`` output.

The idea follows nanoGPT's ``configurator.py`` (command-line overrides of typed defaults) but keeps
only its checks: nothing is ``exec``-ed.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import re

import yaml

from dltricks.errors import ConfigError, did_you_mean

__all__ = ["from_dict", "to_dict", "load_yaml", "apply_overrides", "field", "describe", "check_positive",
           "check_non_negative", "check_fraction"]

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, *, help: str = "", check: Callable[[Any], str | None] | None = None,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help string and an optional value check.

    ``check(value)`` returns ``None`` when the value is fine, or a phrase saying what was expected
    (e.g. ``"a positive number"``).
    """
    metadata = {"help": help, "check": check}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_positive(value: Any) -> str | None:
    return None if value is None or value > 0 else "a number > 0"


def check_non_negative(value: Any) -> str | None:
    return None if value is None or value >= 0 else "a number >= 0"


def check_fraction(value: Any) -> str | None:
    return None if value is None or 0.0 <= value < 1.0 else "a number in [0, 1)"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, Sequence):
        args = get_args(tp)
        inner = _type_name(args[0]) if args else "value"
        return f"a list of {inner}"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type hint ``tp``; return it (ints widen to floats, lists to tuples)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}.{did_you_mean(str(value), [str(a) for a in get_args(tp)])}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping of keys to values")
        key_type, value_type = get_args(tp) or (Any, Any)
        return {_coerce(k, key_type, f"{key} (a key)"): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: got {len(value)} values, expected {len(args)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else list(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}, expected true/false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}, expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: got {value!r}, expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: got {value!r}, expected a string")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: got {value!r}, expected a path")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys, types and field checks."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown key {prefix + str(key)!r}.{did_you_mean(str(key), fields)} "
                              f"Valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err
    validate(obj, prefix=prefix)
    return obj


def validate(obj: Any, *, prefix: str = "") -> None:
    """Run every field's ``check`` (and ``__post_init__``-style ``validate`` methods) recursively."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        _coerce(value, hints[f.name], key)
        check = f.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{key}: got {value!r}, expected {problem}")
        if dataclasses.is_dataclass(value):
            validate(value, prefix=key + ".")


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data view of a config (tuples become lists, paths strings) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(obj)


class _Loader(yaml.SafeLoader):
    """YAML 1.1's float pattern needs a dot (``5e-4`` would be a string); accept YAML 1.2 floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``5e-4`` and ``1e3`` as numbers."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist (expected a YAML file)")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(cls: type[T], base: T | Mapping[str, Any] | None, overrides: Sequence[str]) -> T:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) and re-check the whole config."""
    data = to_dict(base) if dataclasses.is_dataclass(base) else dict(base or {})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.1")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key, value)
    return from_dict(cls, data)


def describe(cls: type, *, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) rows for every field, nested sections flattened."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix=prefix + f.name + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((prefix + f.name, _type_name(tp), default, f.metadata.get("help", "")))
    return rows



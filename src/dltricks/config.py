"""Typed dataclass configs: YAML in, dotted-key overrides, strict checking.

A config is a (nested) dataclass with type hints. :func:`from_dict` builds one from plain data and
rejects unknown keys (naming the closest valid ones) and values of the wrong type (naming the key and
the expected type); :func:`apply_overrides` applies dotted-key overrides such as ``optim.lr=0.1``. Field
metadata may carry a ``check`` callable for range checks and a ``help`` string used by ``--help`` output.

One reader serves every ``KEY=VALUE`` option of the command line (``--set``, ``--model-opt``,
``--data-opt``) and every YAML file: :func:`parse_assignment` splits the item and :func:`parse_value`
reads the value with YAML 1.2 scalars, so ``5e-4`` is a number wherever it is written.

The idea follows nanoGPT's ``configurator.py`` (command-line overrides of typed defaults) but keeps
only its checks: nothing is ``exec``-ed.

A recipe may come from anyone, so the YAML reader refuses, each with one line: files above
:data:`MAX_YAML_BYTES`, bytes that are not UTF-8, more than :data:`MAX_YAML_ALIASES` alias uses and
documents that expand (through aliases) to more than :data:`MAX_YAML_VALUES` values (a "billion laughs"
of a few hundred bytes is refused in milliseconds, before anything is expanded), and a key given twice
in one mapping (YAML says keys are unique; PyYAML would keep the last silently).
"""

from __future__ import annotations

import dataclasses
import re
import reprlib
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from dltricks.errors import ConfigError, did_you_mean

__all__ = ["from_dict", "to_dict", "load_yaml", "apply_overrides", "parse_value", "parse_assignment", "coerce",
           "field", "describe", "check_positive", "check_non_negative", "check_fraction"]

T = TypeVar("T")

# Values in error messages are shortened: a message stays one line, and a value that YAML aliases made
# huge is never printed in full.
_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlevel = 80, 80, 3


def _short(value: Any) -> str:
    return _repr.repr(value)


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
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type hint ``tp``; return it (ints widen to floats, lists to tuples)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        return _coerce_literal(value, tp, key)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if dataclasses.is_dataclass(tp):
        return _coerce_dataclass(value, tp, key)
    if origin in (dict, Mapping) or tp is dict:
        return _coerce_mapping(value, tp, key)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return _coerce_sequence(value, tp, key)
    return _coerce_scalar(value, tp, key)


def _mismatch(value: Any, tp: Any, key: str) -> ConfigError:
    return ConfigError(f"{key}: got {_short(value)}, expected {_type_name(tp)}")


def _coerce_literal(value: Any, tp: Any, key: str) -> Any:
    """``Literal[...]``: the value must be one of the listed ones; a near-miss string gets a suggestion."""
    if value in get_args(tp):
        return value
    hint = did_you_mean(value, [str(a) for a in get_args(tp)]) if isinstance(value, str) else ""
    raise ConfigError(f"{key}: got {_short(value)}, expected {_type_name(tp)}.{hint}")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """``A | B`` and ``Optional[A]``: ``None`` where allowed, else the first member type that accepts the value."""
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError:
            continue
    raise _mismatch(value, tp, key)


def _coerce_dataclass(value: Any, tp: Any, key: str) -> Any:
    """A nested config: an instance as is, or a mapping built (and checked) with :func:`from_dict`."""
    if isinstance(value, tp):
        return value
    if not isinstance(value, Mapping):
        raise _mismatch(value, tp, key)
    return from_dict(tp, value, prefix=key + ".")


def _coerce_mapping(value: Any, tp: Any, key: str) -> dict[Any, Any]:
    """``dict[K, V]`` (or a bare ``dict``): every key and every value checked."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: got {_short(value)}, expected a mapping of keys to values")
    key_type, value_type = get_args(tp) or (Any, Any)
    return {_coerce(k, key_type, f"{key} (a key)"): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}


def _coerce_sequence(value: Any, tp: Any, key: str) -> list[Any] | tuple[Any, ...]:
    """``list[X]``, ``Sequence[X]``, ``tuple[X, ...]`` or a fixed-length ``tuple[A, B]``; a tuple hint gives a tuple."""
    if not isinstance(value, (list, tuple)):
        raise _mismatch(value, tp, key)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{key}: got {len(value)} values, expected {len(args)}")
        items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    else:
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple or tp is tuple else list(items)


# The scalar hints: which values each accepts (bools are not numbers here), how an accepted value is
# converted, and the phrase an error message uses.
_SCALARS: dict[type, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v, "true/false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda v: v, "an integer"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), float, "a number"),
    str: (lambda v: isinstance(v, str), lambda v: v, "a string"),
    Path: (lambda v: isinstance(v, (str, Path)), Path, "a path"),
}


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """``bool``, ``int``, ``float``, ``str``, ``Path``, or any other class the value is an instance of."""
    scalar = _SCALARS.get(tp) if isinstance(tp, type) else None
    if scalar is not None:
        accepts, convert, expected = scalar
        if accepts(value):
            return convert(value)
        raise ConfigError(f"{key}: got {_short(value)}, expected {expected}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _mismatch(value, tp, key)


def coerce(value: Any, tp: Any, *, key: str) -> Any:
    """``value`` checked against type hint ``tp`` (ints widen to floats, lists to tuples where the hint
    says so); a mismatch is a :class:`ConfigError` that names ``key`` and the expected type."""
    return _coerce(value, tp, key)


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys, types and field checks."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys to values, got {_short(data)}")
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
                raise ConfigError(f"{key}: got {_short(value)}, expected {problem}")
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


class _Yaml12Loader(yaml.SafeLoader):
    """A safe loader that types plain scalars by the YAML 1.2 core schema, as people write them.

    PyYAML follows YAML 1.1, where ``5e-4`` and ``1e3`` are strings (a float needs a dot), ``yes``/``off``
    are booleans, ``012`` is octal and ``1:30`` is a sexagesimal integer. YAML 1.2's core schema makes the
    first two floats, ``yes``/``off`` and ``1:30`` strings and ``012`` the decimal 12. Quoted scalars stay
    strings, and timestamps are not converted.
    """

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}


for _tag, _pattern, _first in [
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    ("float", r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
     "-+0123456789."),
    ("merge", r"<<", "<"),
]:
    # The int pattern is registered first, so "12" is an int and only the rest of the numbers are floats.
    _Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), list(_first))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    # YAML 1.2: "012" is decimal; octal and hexadecimal are spelled 0o17 and 0x1f.
    text = str(loader.construct_scalar(node))
    prefixes = {"0o": 8, "0x": 16}
    try:
        base = prefixes.get(text[:2].lower(), 10)
        return int(text[2:] if base != 10 else text, base)
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not an integer", node.start_mark) from None


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)

# A document that expands (through aliases) to more values than this is refused: "billion laughs".
MAX_YAML_VALUES = 100_000
# Uses of aliases (``*name``) in one document: a recipe needs a few, a bomb needs them by the dozen.
MAX_YAML_ALIASES = 64
# Size of a recipe or search-space file; ours are below 4 KB.
MAX_YAML_BYTES = 1024 * 1024


def _compose_node(loader: Any, parent: Any, index: Any) -> Any:
    """PyYAML's ``compose_node``, counting alias uses (refused beyond :data:`MAX_YAML_ALIASES`)."""
    if loader.check_event(yaml.AliasEvent):
        loader.alias_count = getattr(loader, "alias_count", 0) + 1
        if loader.alias_count > MAX_YAML_ALIASES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_ALIASES} aliases (*name)",
                                              loader.peek_event().start_mark)
    return yaml.composer.Composer.compose_node(loader, parent, index)


def _construct_unique_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    """A mapping whose keys are unique (keys merged in with ``<<`` may be overridden, as YAML allows)."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: PyYAML's own constructor says so
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_short(key)}", key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Yaml12Loader.compose_node = _compose_node  # type: ignore[method-assign]
_Yaml12Loader.construct_mapping = _construct_unique_mapping  # type: ignore[method-assign]


def _expanded_size(root: Any, limit: int) -> int:
    """How many values ``root`` holds once every alias is expanded (at most ``limit + 1``), counted
    without expanding them: an aliased list or mapping is one shared object, so each is measured once
    (linear time). A list or mapping that contains itself expands without end."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        if not isinstance(node, (list, dict)):
            return 1
        if id(node) not in sizes:
            sizes[id(node)] = limit + 1  # until measured: a cycle back to this node is "too many"
            children = node.values() if isinstance(node, dict) else node
            sizes[id(node)] = min(limit + 1, 1 + sum(size(child) for child in children))
        return sizes[id(node)]

    return size(root)


def _load(text: str) -> Any:
    """One YAML document (YAML 1.2 scalars), refusing alias bombs; errors are :class:`yaml.YAMLError`."""
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader
        too_big = _expanded_size(data, MAX_YAML_VALUES) > MAX_YAML_VALUES
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    if too_big:
        raise yaml.YAMLError(f"expands to more than {MAX_YAML_VALUES:,} values through its aliases")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The one-line gist of a YAML error (PyYAML's own message spans several lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_value(text: str) -> Any:
    """A command-line value read as YAML 1.2: ``5e-4``, ``1e3`` and ``.5`` are floats, ``3`` an int,
    ``true``/``false`` booleans, ``null`` None, ``[1, 2]`` a list, ``{a: 1}`` a mapping, anything else a
    string (``''`` for an empty value). Text that YAML cannot read is a :class:`ConfigError`."""
    if not text.strip():
        return ""
    try:
        return _load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read {_short(text)} ({_yaml_problem(err)}); put a value meant as text in "
                          "quotes") from None


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_assignment(text: str, flag: str) -> tuple[str, Any]:
    """``"optim.lr=5e-4"`` -> ``("optim.lr", 0.0005)``: the one reader of ``KEY=VALUE`` options (``--set``,
    ``--model-opt``, ``--data-opt``). The key is a dotted name, the value is read by :func:`parse_value`;
    ``flag`` names the option in the :class:`ConfigError` a malformed item raises."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE (there is no '=')")
    if not key:
        raise ConfigError(f"{flag} {text!r}: the key before '=' is empty; expected KEY=VALUE")
    if not _KEY.fullmatch(key):
        raise ConfigError(f"{flag} {text!r}: {key!r} is not a key; expected a name such as lr or optim.lr")
    try:
        return key, parse_value(raw)
    except ConfigError as err:
        raise ConfigError(f"{flag} {key}: {err}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (scalars as in :func:`parse_value`); a missing file or bad YAML is a
    :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"recipe file {str(path)!r} {what} (expected a YAML file)")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror}); expected a readable YAML file") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB; a recipe is a small YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); expected a "
                          "YAML text file") from None
    try:
        data = _load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, last = dotted.split(".")
    node = data
    for part in sections:
        child = node.get(part, {})
        if not isinstance(child, Mapping):
            raise ConfigError(f"{dotted}: {part!r} is not a section (it holds {_short(child)})")
        # A copy: never write into the caller's mapping, nor into one a YAML alias shares.
        node[part] = child = dict(child)
        node = child
    node[last] = value


def apply_overrides(cls: type[T], base: T | Mapping[str, Any] | None,
                    overrides: Iterable[str | tuple[str, Any]]) -> T:
    """Apply dotted-key overrides and re-check the whole config.

    Each override is a ``(key, value)`` pair, or ``"key=value"`` text read by :func:`parse_assignment`.
    """
    data = to_dict(base) if dataclasses.is_dataclass(base) else dict(base or {})
    for item in overrides:
        key, value = parse_assignment(item, "override") if isinstance(item, str) else item
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



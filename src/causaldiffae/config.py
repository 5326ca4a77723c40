"""Typed dataclass configs: YAML/dict loading that rejects unknown keys and wrong types, --help text and flags.

Dataclasses are the source of truth; each field carries its help in ``metadata["help"]``, and a field made with
``flag`` is also a command-line flag (``add_flags``).
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def param(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help line that ``--help`` shows."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def flag(default: Any, help: str, option: str = "", note: str = "") -> Any:
    """A field that is also a command-line flag (``add_flags``): ``--field-name`` unless ``option`` names another;
    its help line shows the default, followed by ``note``."""
    field = param(default, help)
    return dataclasses.field(default=field.default, metadata={**field.metadata, "flag": option or True, "note": note})


def add_flags(parser: argparse.ArgumentParser, cls: type, types: Mapping[str, Any]) -> None:
    """One flag per ``flag`` field of dataclass ``cls``, in field order: its help with the default, the choices of
    a Literal; ``types`` maps a field to its argparse ``type`` (a checker such as positive integers) where the plain
    string is not enough. A tuple's default is the comma-separated text the flag takes."""
    hints = typing.get_type_hints(cls)
    for field in flag_fields(cls):
        hint, default = hints[field.name], field.default
        text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) \
            if isinstance(default, tuple) else default
        note = f"; {field.metadata['note']}" if field.metadata.get("note") else ""
        shown = "" if default is None else f" (default {text}{note})"
        kwargs: dict[str, Any] = {"default": text, "help": field.metadata["help"] + shown}
        if hint is bool:  # a switch: present = true
            kwargs.update(action="store_true", help=field.metadata["help"] + note)
        elif typing.get_origin(hint) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        elif field.name in types:
            kwargs["type"] = types[field.name]
        parser.add_argument(option(field), **kwargs)


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` that are command-line flags."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag")]  # type: ignore[arg-type]


def option(field: dataclasses.Field) -> str:
    """The command-line flag of a ``flag`` field: ``--batch-size`` for batch_size, unless it names its own."""
    named = field.metadata.get("flag")
    return named if isinstance(named, str) else "--" + field.name.replace("_", "-")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; an unknown key or a wrong type raises naming ``where.key``."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                         f"valid keys of {where}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a dataclass type (hints are never instances)
            values[key] = from_dict(hint, value, f"{where}.{key}")
        else:
            values[key] = _coerce(value, hint, f"{where}.{key}")
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint (int, float, bool, str, lists, tuples, dicts, unions, Literal)."""
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        for option in args:
            try:
                return _coerce(value, option, where)
            except ValueError as err:
                if "finite" in str(err):  # the right type, a wrong value: say so, not "wrong type"
                    raise
                continue
        raise ValueError(f"{where} = {value!r} has the wrong type; expected {_name(hint)}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where} = {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if hint is type(None):
        if value is not None:
            raise ValueError(f"{where} must be null")
        return None
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(value, where)
    if hint is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return _finite(value, where)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if hint in (int, bool, str) and type(value) is hint:
        return value
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict and isinstance(value, Mapping):
        return dict(value)
    raise ValueError(f"{where} = {value!r} has the wrong type; expected {_name(hint)}")


def _finite(value: float | str, where: str) -> float:
    """A config number as a float; NaN, inf and overflowing values are refused (they train nothing)."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        text = repr(value)
        raise ValueError(f"{where} = {text if len(text) < 30 else text[:12] + '...'} is not a finite number")
    return number


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def load_yaml(path: str | Path, what: str) -> Any:
    """``yaml.safe_load`` of a file; a missing file or a syntax error raises with one line naming the place."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(read_utf8(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid syntax"
        raise ValueError(f"{what} {path} is not valid YAML{where}: {problem}") from None


def read_utf8(path: str | Path) -> str:
    """The text of a UTF-8 file, a leading byte-order mark dropped; any other encoding is refused with one line
    naming the file and the offset of its first bad byte (not the codec's message, which names neither)."""
    path = Path(path)
    raw = path.read_bytes()
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        raise ValueError(f"{path} is not UTF-8 text: byte 0x{raw[offset]:02x} at offset {offset} ({err.reason}); "
                         "save it as UTF-8") from None


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain dict of a (nested) dataclass, tuples as lists: what YAML and JSON store."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(obj))


def describe(cls: type, prefix: str) -> list[str]:
    """One line per key: ``prefix.key (default): help``, for --help epilogs and docs."""
    lines = []
    for f in dataclasses.fields(cls):
        if not f.init or "help" not in f.metadata:
            continue
        lines.append(f"  {prefix}.{f.name} ({default_of(f)!r}): {f.metadata['help']}")
    return lines


def default_of(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field, calling its factory if it has one."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is dataclasses.MISSING:
        raise TypeError(f"the field {f.name!r} has no default")
    return f.default_factory()

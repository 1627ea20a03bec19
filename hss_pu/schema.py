"""Typed loading of TOML files (config, firmware profiles) with errors a person can act on.

Every error names the file, the dotted key and what was expected, in one line, because
the people who read them are editing a file on a camera over SSH.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from hss_pu.errors import ConfigError
from hss_pu.fsutil import read_bounded

__all__ = [
    "MAX_TOML_BYTES",
    "SchemaError",
    "convert",
    "key_error",
    "load_toml",
    "split_validation_error",
]

# A config file or profile is a few KiB; a bound keeps a mistake from being read whole.
MAX_TOML_BYTES = 1 << 20

T = TypeVar("T")


class SchemaError(ConfigError, ValueError):
    """A file did not match its schema; ``str()`` is the one line to show."""

    def __init__(self, path: Path | str | None, key: str, problem: str) -> None:
        self.path = str(path) if path is not None else "<embedded>"
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_BACKTICK = re.compile(r"`([^`]*)`")


def split_validation_error(err: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's "<message> - at `$.a.b[1]`" as (dotted path "a.b[1]", message).

    Shared by the config/profile errors here and the Vd error 12 texts in wire.vd.
    """
    text = str(err)
    m = _AT.search(text)
    if m is None:
        return "", text
    return m.group("path").lstrip("."), text[: m.start()]


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def _translate(err: msgspec.ValidationError) -> tuple[str, str]:
    """Turn msgspec's message into (dotted key, lower-case problem)."""
    key, msg = split_validation_error(err)
    if msg.startswith("Object contains unknown field"):
        field = _BACKTICK.search(msg)
        return _join(key, field.group(1) if field else "?"), "unknown key"
    if msg.startswith("Object missing required field"):
        field = _BACKTICK.search(msg)
        return _join(key, field.group(1) if field else "?"), "missing required key"
    problem = _BACKTICK.sub(r"\1", msg)
    return key, problem[:1].lower() + problem[1:]


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _literal_choices(type_: Any, key: str) -> list[Any] | None:
    """The allowed values of the Literal field at ``key``, for a message that lists them."""
    t: Any = msgspec.inspect.type_info(type_)
    for name, index in _STEP.findall(key):
        while isinstance(t, msgspec.inspect.UnionType):
            t = next((x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)), None)
        if isinstance(t, msgspec.inspect.StructType) and name:
            t = next((f.type for f in t.fields if f.encode_name == name), None)
        elif isinstance(t, msgspec.inspect.ListType) and index:
            t = t.item_type
        else:
            return None
    while isinstance(t, msgspec.inspect.UnionType):
        t = next((x for x in t.types if isinstance(x, msgspec.inspect.LiteralType)), None)
    return list(t.values) if isinstance(t, msgspec.inspect.LiteralType) else None


def convert(data: Any, type_: type[T], path: Path | str | None, prefix: str = "") -> T:
    """Validate plain data into ``type_``; raise SchemaError naming the key."""
    try:
        return msgspec.convert(data, type_, strict=True)
    except msgspec.ValidationError as exc:
        key, problem = _translate(exc)
        if problem.startswith("invalid enum value"):
            choices = _literal_choices(type_, key)
            if choices:
                got = problem.removeprefix("invalid enum value").strip()
                problem = f"expected one of {', '.join(map(str, choices))}; got {got}"
        raise SchemaError(path, _join(prefix, key), problem) from None


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file (a regular file of at most MAX_TOML_BYTES); syntax and I/O errors
    become SchemaError."""
    try:
        raw, _ = read_bounded(path, MAX_TOML_BYTES)
    except OSError as exc:
        raise SchemaError(path, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SchemaError(path, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(path, "", f"TOML syntax error: {exc}") from None


def key_error(path: Path | str | None, key: str, problem: str) -> SchemaError:
    """Shorthand used by semantic checks that run after the type checks."""
    return SchemaError(path, key, problem)

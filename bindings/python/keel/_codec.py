"""Values in the journal: JSON by default, driven by type hints, pluggable per app.

Where the codec tag lives: inside the value's bytes. A JSON value is stored as plain UTF-8
JSON text, untagged, so ``keel status`` shows it as it is. A value of any other serializer
starts with a NUL byte, the serializer's name and another NUL; JSON text never starts with
NUL, so the two cannot be confused, and a value is always read back by the serializer that
wrote it (a reader that lacks it raises ``SerializationError``).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys
import types
import typing
from typing import Any, Protocol, Sequence, runtime_checkable

from ._errors import SerializationError

_TAG = b"\x00"


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back. ``name`` tags its values in the journal."""

    name: str

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes, hint: Any) -> Any: ...


def _pydantic_model() -> Any:
    """pydantic's ``BaseModel`` if pydantic is imported (a value or hint can only be a pydantic
    model then), without trying to import it on every value."""
    pydantic = sys.modules.get("pydantic")
    return None if pydantic is None else getattr(pydantic, "BaseModel", None)


def _jsonable(value: Any) -> Any:
    model = _pydantic_model()
    if model is not None and isinstance(value, model):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _from_jsonable(value: Any, hint: Any) -> Any:
    if hint is None or hint is Any or isinstance(hint, typing.TypeVar):
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                return _from_jsonable(value, arg)
        return value
    if origin in (list, Sequence, set, frozenset) and isinstance(value, list):
        item = args[0] if args else None
        items = [_from_jsonable(v, item) for v in value]
        return origin(items) if origin in (set, frozenset) else items
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_jsonable(v, args[0]) for v in value)
        return tuple(_from_jsonable(v, a) for v, a in zip(value, args or [None] * len(value)))
    if origin is dict and isinstance(value, dict):
        item = args[1] if len(args) == 2 else None
        return {k: _from_jsonable(v, item) for k, v in value.items()}
    if isinstance(hint, type):
        model = _pydantic_model()
        if model is not None and issubclass(hint, model):
            return getattr(hint, "model_validate")(value)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            hints = _hints(hint)
            return hint(
                **{
                    f.name: _from_jsonable(value[f.name], hints.get(f.name))
                    for f in dataclasses.fields(hint)
                    if f.name in value
                }
            )
    return value


def _hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}


class JsonSerializer:
    """JSON types, dataclasses and pydantic models (when pydantic is installed); values are
    read back into the type the hint names."""

    name = "json"

    def encode(self, value: Any) -> bytes:
        try:
            return json.dumps(
                _jsonable(value), ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode()
        except (TypeError, ValueError) as error:
            raise SerializationError(
                f"cannot serialize a {type(value).__name__} as JSON: {error}"
            ) from error

    def decode(self, data: bytes, hint: Any) -> Any:
        try:
            return _from_jsonable(json.loads(data), hint)
        except (TypeError, ValueError, KeyError) as error:
            raise SerializationError(f"cannot read a journaled JSON value: {error}") from error


class PickleSerializer:
    """Pickle, for values JSON cannot hold. Opt in only for values you trust: unpickling runs
    code, so never use it on text that came from outside (an LLM's output included)."""

    name = "pickle"

    def encode(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value)
        except Exception as error:
            raise SerializationError(f"cannot pickle a {type(value).__name__}: {error}") from error

    def decode(self, data: bytes, hint: Any) -> Any:
        return pickle.loads(data)


class Codec:
    """An app's values: encoded by its serializer, decoded by the one that wrote them."""

    def __init__(self, serializer: Serializer | None = None) -> None:
        self.json = JsonSerializer()
        self.serializer: Serializer = serializer or self.json
        if not isinstance(self.serializer, Serializer):
            raise TypeError("a serializer has `name`, `encode(value)` and `decode(data, hint)`")
        if self.serializer.name != "json" and not self.serializer.name.isidentifier():
            raise ValueError("a serializer's name is an identifier")

    def encode(self, value: Any) -> bytes:
        data = self.serializer.encode(value)
        if self.serializer.name == "json":
            return data
        return _TAG + self.serializer.name.encode() + _TAG + data

    def decode(self, data: bytes, hint: Any = None) -> Any:
        if not data.startswith(_TAG):
            return self.json.decode(data, hint)
        name, sep, payload = data[1:].partition(_TAG)
        if not sep or name.decode(errors="replace") != self.serializer.name:
            raise SerializationError(
                f"a journaled value was written by serializer {name.decode(errors='replace')!r}, "
                f"and this app reads {self.serializer.name!r}"
            )
        return self.serializer.decode(payload, hint)

    def encode_args(self, args: Sequence[Any]) -> bytes:
        """Positional arguments as one value (a JSON array with the JSON serializer)."""
        return self.encode(list(args))

    def decode_args(self, data: bytes, hints: Sequence[Any]) -> list[Any]:
        values = self.decode(data, None) if data else []
        if not isinstance(values, list):
            raise SerializationError("a workflow's input is an array of positional arguments")
        return [
            _from_jsonable(v, hints[i] if i < len(hints) else None) for i, v in enumerate(values)
        ]

"""What the daemon sends its web process: data only, never code (:mod:`device.web_process`).

The status board, the live view and the web settings cross a socket between the two processes
many times a second. Pickle would carry them in one line, but unpickling can run any code the
bytes name, and nothing in ``device/`` unpickles. So a message here is JSON plus raw buffers:

    <8 bytes: length of the JSON header, big-endian> <the JSON header> <the arrays' bytes, in order>

The header spells out what JSON cannot: tuples, deques (with their bound), mappings with
non-string keys or read-only ones, numpy arrays (dtype, shape and their place among the
buffers: a 640×480 frame is not base64-encoded 20 times a second), deques of floats (the board's
600 timings per stage: one buffer each, as item by item they cost the daemon and its web process
a twentieth of a core each), and objects of the few classes a :class:`Wire` is given — frozen
dataclasses rebuilt from their fields, pydantic models from their JSON form, validated again. A
name that is not among them is refused (:class:`WireError`), so decoding can build nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from array import array
from collections import deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
from pydantic import BaseModel

_LENGTH = struct.Struct(">Q")


class WireError(ValueError):
    """A message that does not decode into the values it claims."""


class Wire:
    """Encodes and decodes values made of JSON scalars, containers, arrays and ``classes``."""

    def __init__(self, classes: Iterable[type]) -> None:
        self._classes = {cls.__qualname__: cls for cls in classes}

    def extended(self, *classes: type) -> Wire:
        """This wire with more classes that may travel on it."""
        return Wire((*self._classes.values(), *classes))

    def encode(self, value: Any) -> bytes:
        buffers: list[bytes] = []
        header = json.dumps(self._plain(value, buffers), separators=(",", ":")).encode()
        return b"".join([_LENGTH.pack(len(header)), header, *buffers])

    def decode(self, data: bytes) -> Any:
        view = memoryview(data)
        try:
            (length,) = _LENGTH.unpack_from(view)
            document = json.loads(bytes(view[_LENGTH.size : _LENGTH.size + length]))
            return _Reader(self._classes, view[_LENGTH.size + length :]).value(document)
        except (struct.error, ValueError, TypeError, KeyError, IndexError) as exc:
            raise WireError(f"not a message of this wire: {exc}") from None

    def _plain(self, value: Any, buffers: list[bytes]) -> Any:
        """``value`` as JSON-ready data; arrays go to ``buffers``."""
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"float": repr(value)}
        if isinstance(value, bytes):
            buffers.append(value)
            return {"bytes": len(value)}
        if isinstance(value, np.ndarray):
            data = np.ascontiguousarray(value).tobytes()
            buffers.append(data)
            return {"array": [value.dtype.str, list(value.shape), len(data)]}
        if isinstance(value, np.generic):
            return self._plain(value.item(), buffers)
        if isinstance(value, list):
            return [self._plain(item, buffers) for item in value]
        if isinstance(value, tuple):
            return {"tuple": [self._plain(item, buffers) for item in value]}
        if isinstance(value, deque):
            if value and all(type(item) is float for item in value):  # timings: one buffer, not 600 items
                data = array("d", value).tobytes()
                buffers.append(data)
                return {"floats": len(data), "maxlen": value.maxlen}
            return {"deque": [self._plain(item, buffers) for item in value], "maxlen": value.maxlen}
        if isinstance(value, Mapping):
            pairs = [[self._plain(k, buffers), self._plain(v, buffers)] for k, v in value.items()]
            return {"mapping": pairs, "read_only": isinstance(value, MappingProxyType)}
        name = type(value).__qualname__
        if self._classes.get(name) is not type(value):
            raise TypeError(f"{name} does not travel on this wire")
        if isinstance(value, BaseModel):
            return {"model": name, "json": value.model_dump(mode="json")}
        if dataclasses.is_dataclass(value):
            fields = {f.name: self._plain(getattr(value, f.name), buffers) for f in dataclasses.fields(value)}
            return {"object": name, "fields": fields}
        return {"object": name, "fields": {k: self._plain(v, buffers) for k, v in vars(value).items()}}


class _Reader:
    def __init__(self, classes: Mapping[str, type], buffers: memoryview) -> None:
        self._classes, self._buffers, self._at = classes, buffers, 0

    def value(self, item: Any) -> Any:
        if item is None or isinstance(item, bool | int | float | str):
            return item
        if isinstance(item, list):
            return [self.value(v) for v in item]
        if "float" in item:
            return float(item["float"])  # nan, inf or -inf: float() accepts nothing else of note
        if "bytes" in item:
            return bytes(self._take(item["bytes"]))
        if "array" in item:
            dtype, shape, size = item["array"]
            values = np.frombuffer(self._take(size), dtype=np.dtype(dtype)).reshape(shape).copy()
            values.flags.writeable = False
            return values
        if "tuple" in item:
            return tuple(self.value(v) for v in item["tuple"])
        if "floats" in item:
            floats = array("d")
            floats.frombytes(self._take(item["floats"]))
            return deque(floats, maxlen=item["maxlen"])
        if "deque" in item:
            return deque((self.value(v) for v in item["deque"]), maxlen=item["maxlen"])
        if "mapping" in item:
            mapping = {self.value(k): self.value(v) for k, v in item["mapping"]}
            return MappingProxyType(mapping) if item["read_only"] else mapping
        if "model" in item:
            return self._class(item["model"]).model_validate(item["json"])
        cls = self._class(item["object"])
        fields = {k: self.value(v) for k, v in item["fields"].items()}
        if dataclasses.is_dataclass(cls):
            return cls(**fields)
        made = cls.__new__(cls)
        vars(made).update(fields)
        return made

    def _take(self, size: int) -> memoryview:
        """The next ``size`` bytes of the buffers."""
        data = self._buffers[self._at : self._at + size]
        if len(data) != size:
            raise ValueError("a buffer's bytes are missing")
        self._at += size
        return data

    def _class(self, name: str) -> Any:
        if name not in self._classes:
            raise ValueError(f"{name!r} is not a class of this wire")
        return self._classes[name]

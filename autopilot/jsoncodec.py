"""JSON for the hot paths (results in Redis, the API's answers): orjson, with the standard library
behind it for what orjson refuses.

orjson encodes and decodes several times faster than ``json`` (a 1,000-node status decodes and
encodes 5,000 results). It refuses a few things ``json`` accepts: integers past 64 bits, strings
with lone surrogates, and ``NaN``/``Infinity`` literals in text written by ``json`` earlier. Those
go through ``json`` instead, so nothing that used to round-trip is lost. Output is compact
(no spaces) and UTF-8 (no ``\\u`` escapes, but for the fallback); both are the same JSON to
every reader.

A ``Preencoded`` value (a stored result) already holds its JSON text: it is written as that text,
never decoded to be encoded again (``splicing``).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


class Preencoded(abc.ABC):
    """A value that holds its own JSON text (``json_bytes``, one JSON value, valid UTF-8)."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def json_bytes(self) -> bytes: ...


def splicing(default: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An orjson ``default`` that writes a ``Preencoded`` value as its own text, else calls ``default``."""

    def hook(obj: Any) -> Any:
        if isinstance(obj, Preencoded):
            return orjson.Fragment(obj.json_bytes)
        return default(obj)

    return hook


def decoding(default: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A ``json`` (standard library) ``default`` that decodes a ``Preencoded`` value, else calls ``default``."""

    def hook(obj: Any) -> Any:
        if isinstance(obj, Preencoded):
            return loads(obj.json_bytes)
        return default(obj)

    return hook


def dumps(obj: Any, *, default: Callable[[Any], Any] = str) -> bytes:
    """``obj`` as UTF-8 JSON; ``default`` turns what JSON has no type for into something it has."""
    try:
        return orjson.dumps(obj, default=splicing(default), option=_OPTIONS)
    except orjson.JSONEncodeError:
        # ASCII escapes: a lone surrogate has no UTF-8 form, but "\\udc80" is valid JSON.
        return json.dumps(obj, default=decoding(default), separators=(",", ":")).encode()


def loads(data: str | bytes) -> Any:
    """Decode JSON text. Raises ``json.JSONDecodeError`` (orjson's is a subclass) for what is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def first_document(text: str) -> Any:
    """The first JSON document in a tool's stdout that starts a line; what follows it is ignored.

    Tools print warnings ahead of their document (iperf3: "warning: UDP block size ...") and
    sometimes a second copy or a trailer after it (iperf3 3.16/3.17, dcgmi): neither hides the
    document. A "{" inside a warning line is not the document. Raises ``ValueError`` when there is none.
    """
    return first_document_and_end(text)[0]


def first_document_and_end(text: str) -> tuple[Any, int]:
    """``first_document`` and the index in ``text`` just past it (where a trailer would start)."""
    start = text.find("{")
    while start > 0 and text[start - 1] != "\n":
        start = text.find("{", start + 1)
    if start < 0:
        raise ValueError(f"no line starts a JSON document: {text.strip()[:200]!r}")
    doc, end = json.JSONDecoder().raw_decode(text, start)
    return doc, end

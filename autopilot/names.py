"""Validation of every name that reaches a queue, a label selector or a command line.

Names made from others (a Job's, a label value's) that must fit a limit are shortened with one
hash scheme (``shortened``).

Node names are DNS-1123 subdomains (what Kubernetes accepts for a Node); label keys and values
follow the Kubernetes label syntax; ``job`` is ``namespace:key=value``. Anything else is rejected
with ``BadParameter`` naming the field, before it is used anywhere.
"""

from __future__ import annotations

import functools
import hashlib
import re

from autopilot import errors

# Always applied with fullmatch: "$" alone also matches before a trailing newline, which would let
# "node-a\n" through into a queue name or a selector.
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")

QUEUE_PREFIX = "autopilot.node."


def node_name(name: str, *, field: str = "host") -> str:
    """``name`` if it is a DNS-1123 subdomain (lowercase, at most 253 characters)."""
    if not isinstance(name, str) or not name or not is_dns1123_subdomain(name):
        raise errors.BadParameter(field, f"not a valid node name (DNS-1123 subdomain): {str(name)[:80]!r}")
    return name


def is_dns1123_label(text: str) -> bool:
    """Whether ``text`` is a DNS-1123 label (what a Job's name must be to label its pods): lowercase
    alphanumerics and ``-``, alphanumeric at both ends, at most 63 characters."""
    return len(text) <= 63 and bool(_DNS1123_LABEL.fullmatch(text))


def is_dns1123_subdomain(text: str) -> bool:
    """Whether ``text`` is a DNS-1123 subdomain (a node's name, a label key's prefix): dot-separated
    DNS-1123 labels, at most 253 characters."""
    return len(text) <= 253 and bool(_DNS1123_SUBDOMAIN.fullmatch(text))


def is_label_name(text: str) -> bool:
    """Whether ``text`` is the name part of a qualified name (a label key after its ``/``): 1 to 63
    of ``[-A-Za-z0-9_.]``, alphanumeric at both ends."""
    return 0 < len(text) <= 63 and bool(_LABEL_NAME.fullmatch(text))


def is_label_value(text: str) -> bool:
    """Whether ``text`` is a label value: empty, or what ``is_label_name`` accepts."""
    return len(text) <= 63 and bool(_LABEL_VALUE.fullmatch(text))


def shortened(text: str, room: int, *, digest_chars: int = 10, label: bool = False) -> str:
    """``text`` cut to fit ``room`` characters, a hash of the whole appended: ``<start>-<digest>``, the
    digest being the first ``digest_chars`` hex digits of ``text``'s SHA-256. The same text always gives
    the same name, and texts that share their start get different ones. Callers use it only when
    ``text`` does not fit (or is not valid) as it is.

    ``label``: the start is made fit for a DNS-1123 label (lower case, every run of other characters
    a ``-``, no ``-`` at its ends; only the digest when nothing is left); the digest is still of
    ``text`` as given, so ``a.b`` and ``a-b`` differ. Without it the start is ``text``'s own first
    characters (a node name in a label value, where ``.`` and ``-`` may stand anywhere but at the ends).
    """
    digest = hashlib.sha256(text.encode()).hexdigest()[:digest_chars]
    stem = re.sub(r"[^a-z0-9-]+", "-", text.lower()) if label else text
    stem = stem[: max(0, room - digest_chars - 1)]
    if label:
        stem = stem.strip("-")
    return f"{stem}-{digest}" if stem else digest


def node_queue(node: str) -> str:
    """The Celery queue of ``node``: ``autopilot.node.<node>``."""
    return QUEUE_PREFIX + node_name(node)


def label_key(key: str, *, field: str) -> str:
    """A label key: optional DNS-1123 prefix and ``/``, then a name of at most 63 characters."""
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        raise errors.BadParameter(field, f"invalid label key prefix: {key[:80]!r}")
    if not is_label_name(name):
        raise errors.BadParameter(field, f"invalid label key: {key[:80]!r}")
    return key


def label_value(value: str, *, field: str) -> str:
    if not is_label_value(value):
        raise errors.BadParameter(field, f"invalid label value: {value[:80]!r}")
    return value


def label_selector(text: str, *, field: str = "nodelabel") -> tuple[str, str]:
    """``key=value`` (one equality requirement, as upstream's ``nodelabel``) -> (key, value)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise errors.BadParameter(field, f"expected key=value, got {text[:80]!r}")
    return label_key(key.strip(), field=field), label_value(value.strip(), field=field)


def job_selector(text: str, *, field: str = "job") -> tuple[str, str, str]:
    """``namespace:key=value`` -> (namespace, key, value)."""
    namespace, sep, selector = text.partition(":")
    if not sep:
        raise errors.BadParameter(field, f"expected namespace:key=value, got {text[:80]!r}")
    if len(namespace) > 63 or not _DNS1123_LABEL.fullmatch(namespace):
        raise errors.BadParameter(field, f"invalid namespace: {namespace[:80]!r}")
    key, value = label_selector(selector, field=field)
    return namespace, key, value


_BDF = re.compile(
    r"(?:(?P<dom>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<dev>[0-9a-fA-F]{1,2})(?:\.(?P<fn>[0-7]))?"
)


# Cached: the engine names every GPU device of every result by its bus id (``gpuident.attach``),
# the same few addresses over and over; a pure function of its argument, bounded.
@functools.lru_cache(maxsize=1024)
def bus_id(text: str) -> str:
    """A PCI address in one form, ``dddd:bb:dd.f`` lower case, whatever form it came in.

    NVML says ``00000000:9B:00.0``, the driver's Xid line ``PCI:0000:9b:00`` (no function), the
    kernel and sysfs ``0000:9b:00.0``, CUDA ``0000:9B:00.0``; all are ``0000:9b:00.0``. Text that is
    no PCI address comes back stripped and unchanged.
    """
    raw = text.strip().removeprefix("PCI:")
    found = _BDF.fullmatch(raw)
    if not found:
        return raw
    dom = int(found.group("dom") or "0", 16)
    return f"{dom:04x}:{int(found.group('bus'), 16):02x}:{int(found.group('dev'), 16):02x}.{found.group('fn') or '0'}"


@functools.lru_cache(maxsize=1024)
def is_bus_id(text: str) -> bool:
    """Whether ``text`` is a PCI address in any of the forms ``bus_id`` reads."""
    return _BDF.fullmatch(text.strip().removeprefix("PCI:")) is not None

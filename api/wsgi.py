"""``api.wsgi:app`` for those who run gunicorn themselves (``gunicorn -k gthread api.wsgi:app``).

The app is built from the environment on first access, not at import, so importing this module
(a linter, a test) needs no Redis and no settings.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

_app: Flask | None = None


def get_app() -> Flask:
    global _app
    if _app is None:
        from api.app import create_app

        _app = create_app()
    return _app


def __getattr__(name: str) -> Any:
    if name in ("app", "application"):
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

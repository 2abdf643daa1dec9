"""Autopilot: health checks that keep GPU clusters honest.

The core package: checks, results, verdicts, settings and the seams to the outside world.
It imports no celery, flask or redis; ``workers`` and ``api`` build on it.
"""

__version__ = "0.1.0"

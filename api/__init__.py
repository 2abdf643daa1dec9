"""The Flask adapter: app factory, routes, request validation, error mapping, OpenAPI, client.

``api`` may import ``autopilot``, ``workers.dispatch``, ``workers.store``, ``workers.app`` and
``workers.reconcile``; nothing in ``workers`` or ``autopilot`` imports ``api``.
"""

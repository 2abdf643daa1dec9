"""Registers the test checks of ``check_specs`` in the global registry of the process importing it.

Only worker processes started by the integration tests import this, through
``AUTOPILOT_EXTRA_CHECKS=tests.integration.checks_for_tests``.
"""

from autopilot import registry
from tests.integration.check_specs import SPECS

for _spec in SPECS:
    if _spec.name not in registry.REGISTRY:
        registry.REGISTRY.add(_spec)

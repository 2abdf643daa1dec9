"""The list of checks: importing this package registers each one in ``registry.REGISTRY``.

One explicit import per check module; adding a check means adding its module and one line here.
"""

from autopilot.checks import dcgm, gpumem, gpupower, iperf, pciebw, ping, pvc, remapped

__all__ = ["dcgm", "gpumem", "gpupower", "iperf", "pciebw", "ping", "pvc", "remapped"]

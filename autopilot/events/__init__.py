"""Passive detection: read the GPU's own error stream (kernel log, NVML events, cheap counters) as it happens.

- ``catalogue``: what each Xid, SXid, PCIe AER and counter code means and what to do (data in
  ``autopilot/data/events.json``);
- ``kmsg``: the ``/dev/kmsg`` record format, the lines it classifies and the reader behind a seam;
- ``counters``: polled counters (NVML, InfiniBand sysfs) turned into rises between polls, and polled
  states (pending remaps and repairs, the driver's recovery action) into changes;
- ``follower``: the supervised threads that read the sources, fold storms and emit ``events`` results.

The NVML calls live in the seam ``autopilot.nvml_events`` (the only other module that imports pynvml).

A saved kernel log (dmesg, journalctl, syslog, container logs) is read into messages by ``logformats``
and judged through a follower of its own by ``savedlog`` (``autopilot evaluate events FILE``).
"""

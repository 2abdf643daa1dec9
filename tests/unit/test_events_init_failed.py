"""A GPU the driver could not initialise (``RmInitAdapter failed!``) is a finding of the kernel-log reader.

The lines are written by hand in the forms the NVIDIA driver prints (open-gpu-kernel-modules'
resource manager; forms seen in public logs of 285 to 570-era drivers): the headline naming the GPU
(``NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x62:0xffff:1863)``), in a VM with both addresses,
older drivers' headline naming none, and the line after it (``rm_init_adapter failed, device minor
number 0``), which repeats the same failure.
"""

from __future__ import annotations

import pytest

from autopilot.events import kmsg, savedlog
from autopilot.events.catalogue import Action
from autopilot.results import Status


@pytest.mark.parametrize(
    ("line", "device"),
    [
        ("NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x62:0xffff:1863)", "0000:01:00.0"),
        ("NVRM: GPU 0000:3B:00.0: RmInitAdapter failed! (0x26:0x65:1457)", "0000:3b:00.0"),
        ("NVRM: GPU 0000:00:07.0 / 0000:00:0b.0: RmInitAdapter failed! (0x62:0x40:2028)", "0000:00:07.0"),
        ("NVRM: GPU 0000:01:00.0: RmInitAdapter failed!", "0000:01:00.0"),
        ("NVRM: RmInitAdapter failed! (0x26:0x65:1457)", "kmsg"),  # names no GPU
    ],
)
def test_rm_init_adapter_failed_is_an_evicting_finding_for_the_gpu_it_names(line: str, device: str) -> None:
    [event] = kmsg.classify(line)
    assert (event.code, event.device, event.action) == ("driver.init_failed", device, Action.EVICT)


@pytest.mark.parametrize(
    "line",
    [
        # The reason printed before the headline, and the line after it: the same failure, read once.
        "NVRM: RmInitAdapter: Cannot initialize GSP firmware RM",
        "NVRM: GPU 0000:01:00.0: rm_init_adapter failed, device minor number 0",
        "NVRM: rm_init_adapter(0) failed",
        "NVRM: GPU 0000:01:00.0: RmInitAdapter succeeded",
    ],
)
def test_the_lines_around_the_headline_are_no_second_finding(line: str) -> None:
    assert kmsg.classify(line) == []


def test_a_saved_log_with_a_gpu_that_did_not_initialise_is_a_fatal_fail() -> None:
    text = (
        "[    6.079619] NVRM: RmInitAdapter: Cannot initialize GSP firmware RM\n"
        "[    6.080914] NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x62:0xffff:1863)\n"
        "[    6.081257] NVRM: GPU 0000:01:00.0: rm_init_adapter failed, device minor number 0\n"
    )
    result = savedlog.judge(text, storm_window_s=60.0)
    assert result.status is Status.FAIL and result.fatal
    assert [(f["device"], f["code"], f["count"]) for f in result.data["findings"]] == [
        ("0000:01:00.0", "driver.init_failed", 1)
    ]

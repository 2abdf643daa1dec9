"""The chart's part of the event follower: /dev/kmsg read-only, least privilege, and a value to turn it off."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT

CHART = ROOT / "helm" / "autopilot"


def test_the_worker_mounts_only_dev_kmsg_read_only_and_stays_unprivileged() -> None:
    text = (CHART / "templates" / "worker-daemonset.yaml").read_text()
    gate = "{{- if and .Values.worker.follower.enabled .Values.worker.follower.kmsg }}"
    assert text.count(gate) == 2  # the mount and the volume, both behind the switches
    assert "- {name: kmsg, mountPath: /dev/kmsg, readOnly: true}" in text
    assert "hostPath: {path: /dev/kmsg, type: CharDevice}" in text
    assert "privileged: false" in text and "privileged: true" not in text
    assert "SYS_ADMIN" not in text and "hostPID" not in text


def test_a_value_turns_the_follower_off_and_reaches_the_worker() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]["follower"]
    assert values["enabled"] is True and values["kmsg"] is True and values["kmsgDeviceResource"] == ""
    text = (CHART / "templates" / "worker-daemonset.yaml").read_text()
    assert re.search(r"name: AUTOPILOT_EVENTS_FOLLOWER\s+value: \{\{ \$f\.enabled \| toString \| quote \}\}", text)


def test_the_device_plugin_resource_is_requested_only_when_set() -> None:
    text = (CHART / "templates" / "worker-daemonset.yaml").read_text()
    assert re.search(r"with \(and \.Values\.worker\.follower\.enabled \.Values\.worker\.follower\.kmsg "
                     r"\.Values\.worker\.follower\.kmsgDeviceResource\)", text)  # fmt: skip
    assert 'set $res "limits" (merge (dict . "1")' in text

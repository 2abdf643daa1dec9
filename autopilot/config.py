"""Settings: every ``AUTOPILOT_*`` environment variable, read once into a frozen object.

``Settings.from_env(os.environ)`` is called by each entry point at process start; nothing else
reads the environment. Upstream's variable names are accepted as aliases (ARCHITECTURE.md 4.4),
and every value is validated here, so a bad setting stops the process at start with a message
naming the variable instead of surfacing hours later in a periodic loop.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from collections.abc import Mapping
from typing import Any

from autopilot import errors

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str, *, field: str = "duration") -> float:
    """``"1h"`` -> 3600.0, ``"30m"``, ``"15s"``, ``"250ms"``, bare numbers are seconds; ``0`` disables."""
    match = _DURATION.match(text)
    if not match:
        raise errors.BadParameter(field, f"not a duration: {text!r} (use e.g. 1h, 30m, 15s)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_list(text: str) -> tuple[str, ...]:
    """A comma-separated list, items stripped, empty items dropped (``"a, b,"`` -> ``("a", "b")``)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_bool(text: str, *, field: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise errors.BadParameter(field, f"not a boolean: {text!r}")


def parse_float(text: str, *, field: str, minimum: float | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise errors.BadParameter(field, f"not a number: {text!r}") from None
    if value != value or (minimum is not None and value < minimum):  # NaN, or below range
        raise errors.BadParameter(field, f"must be a number >= {minimum}: {text!r}")
    return value


def parse_mapping(text: str, *, field: str) -> dict[str, float]:
    """``"dcgm=900, pciebw=120"`` -> ``{"dcgm": 900.0, "pciebw": 120.0}``."""
    out: dict[str, float] = {}
    for item in parse_list(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise errors.BadParameter(field, f"expected key=value, got {item!r}")
        out[key.strip()] = parse_float(value.strip(), field=f"{field}.{key.strip()}", minimum=0)
    return out


@dataclasses.dataclass(frozen=True)
class Settings:
    """Process-wide configuration. Field docstrings double as the configuration reference."""

    node_name: str = dataclasses.field(default_factory=socket.gethostname)
    """This node's name (``NODE_NAME``; default: the hostname)."""

    # repr=False: the URL may carry a password, and a logged or printed Settings must not show it.
    redis_url: str = dataclasses.field(default="", repr=False)
    """Broker and results store (``AUTOPILOT_REDIS_URL``); empty: ``autopilot up`` starts its own."""

    periodic_checks: tuple[str, ...] = ("pciebw", "remapped", "dcgm", "ping", "gpupower")
    """Checks run every periodic interval (``AUTOPILOT_PERIODIC_CHECKS``, alias ``PERIODIC_CHECKS``)."""

    periodic_interval_s: float = 3600.0
    """Seconds between periodic runs (``AUTOPILOT_PERIODIC_INTERVAL``: ``1h``, ``30m``; ``0`` disables)."""

    invasive_interval_s: float = 4 * 3600.0
    """Seconds between invasive DCGM level-3 runs (``AUTOPILOT_INVASIVE_INTERVAL``; ``0`` disables)."""

    invasive_job_ttl_s: int = 30
    """TTL of finished invasive Jobs (``AUTOPILOT_INVASIVE_JOB_TTLSEC``, alias ``INVASIVE_JOB_TTLSEC``)."""

    pvc_storage_class: str = ""
    """Storage class the ``pvc`` check provisions (``PVC_TEST_STORAGE_CLASS``); empty: ``pvc`` is skipped."""

    dcgm_fatal_errors: tuple[str, ...] = ("PCIe", "NVLink", "ECC", "GPU Memory")
    """DCGM test categories whose failure evicts the node (``DCGM_FATAL_ERRORS``, comma-separated)."""

    dcgm_level: int = 1
    """``dcgmi diag -r`` level of the periodic ``dcgm`` check (``AUTOPILOT_DCGM_LEVEL``, 1..4)."""

    pciebw_threshold_gbps: float = 4.0
    """Minimum host-to-device bandwidth in GB/s, gigabytes per second (``AUTOPILOT_PCIEBW_THRESHOLD_GBPS``)."""

    gpumem_thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Override of the per-model ``gpumem`` thresholds: ``h2d_gbps=4,daxpy_gbps=1300,dgemm_tflops=16``."""

    cuda_bin_dir: str = "/usr/local/lib/autopilot"
    """Where the ``cuda_src`` programs (``ap-bandwidth``, ``ap-gpumem``) are installed."""

    bandwidthtest_path: str = ""
    """Optional NVIDIA ``bandwidthTest`` binary; when set ``pciebw`` uses it instead of ``ap-bandwidth``."""

    check_timeouts: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Per-check timeout overrides in seconds: ``dcgm=900,pciebw=120`` (``AUTOPILOT_CHECK_TIMEOUTS``)."""

    api_token: str = dataclasses.field(default="", repr=False)  # a secret: never in a repr or a log
    """Bearer token the API requires when set (``AUTOPILOT_API_TOKEN``)."""

    api_host: str = ""
    """Address the API binds (``AUTOPILOT_API_HOST``); empty: 127.0.0.1 without a token, 0.0.0.0 with one."""

    api_port: int = 3333
    """API port (``AUTOPILOT_API_PORT``)."""

    api_max_waits: int = 24
    """Requests that wait on nodes (``/status``, a run read with ``wait``) one API process serves at once
    (``AUTOPILOT_API_MAX_WAITS``); more are answered ``503`` with ``Retry-After``, so threads stay free for the
    rest (``/healthz``, ``/readyz``). ``autopilot api`` runs at least this many threads plus 8."""

    api_redis_timeout_s: float = 0.5
    """Socket and connect timeout of the API's Redis connections (``AUTOPILOT_API_REDIS_TIMEOUT``), without
    retries: a Redis that stops answering costs a request at most this long past its deadline (then ``503``)."""

    api_max_body: int = 1024 * 1024
    """Largest request body the API reads, in bytes (``AUTOPILOT_API_MAX_BODY``); a larger one is answered
    ``413`` before it is read."""

    metrics_interval_s: float = 15.0
    """The node gauges of ``/metrics`` are computed at most once per this interval per API process and shared
    by every scrape within it (``AUTOPILOT_METRICS_INTERVAL``; ``0``: on every scrape)."""

    history_len: int = 100
    """Results kept per node in the history list (``AUTOPILOT_HISTORY_LEN``)."""

    run_ttl_s: float = 86400.0
    """How long run records live in Redis (``AUTOPILOT_RUN_TTL``)."""

    node_deadline_s: float = 60.0
    """Default deadline for one node's answer in an API gather (``AUTOPILOT_NODE_DEADLINE``)."""

    network_interfaces: tuple[str, ...] = ()
    """Interfaces the network checks use (``AUTOPILOT_NETWORK_INTERFACES``, comma-separated; empty: every one
    a node reports except loopback)."""

    podinfo_annotations: str = "/etc/podinfo/annotations"
    """Downward-API file of the worker pod's annotations (``AUTOPILOT_PODINFO_ANNOTATIONS``): its Multus
    ``k8s.v1.cni.cncf.io/network-status`` names the secondary interfaces; a missing file is ignored."""

    heartbeat_interval_s: float = 15.0
    """How often a worker writes its node record (``AUTOPILOT_HEARTBEAT_INTERVAL``); a node unseen for
    three intervals is not live."""

    reconcile_interval_s: float = 30.0
    """How often beat recomputes verdicts and labels and sweeps stale results (``AUTOPILOT_RECONCILE_INTERVAL``)."""

    worker_concurrency: int = 4
    """Threads per worker (``AUTOPILOT_WORKER_CONCURRENCY``); GPU checks still run one at a time per node."""

    cluster: str = "auto"
    """Use a Kubernetes cluster (``AUTOPILOT_CLUSTER``): ``auto`` (in a pod, or with a kubeconfig given), ``on``,
    ``off`` (labels go to the local label store in Redis)."""

    kubeconfig: str = ""
    """Kubeconfig file (``AUTOPILOT_KUBECONFIG``, alias ``KUBECONFIG``); empty: in-cluster configuration."""

    in_cluster: bool = False
    """Whether this process runs in a pod (read from ``KUBERNETES_SERVICE_HOST``, which Kubernetes sets)."""

    namespace: str = "autopilot"
    """Namespace of Autopilot's own objects: invasive Jobs and node Events (``AUTOPILOT_NAMESPACE``, alias
    ``POD_NAMESPACE``, which the chart sets from the downward API)."""

    image: str = ""
    """Autopilot's container image (``AUTOPILOT_IMAGE``, set by the chart): runs the invasive DCGM Job and the
    ``pvc`` check's consumer pod; empty: neither can be started (the outcome says so)."""

    invasive_tolerations: tuple[Mapping[str, Any], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    """Tolerations of the invasive Job's pod, a JSON list (``AUTOPILOT_INVASIVE_TOLERATIONS``); default tolerates
    the ``nvidia.com/gpu`` NoSchedule taint of GPU nodes."""

    invasive_deadline_s: float = 3600.0
    """``activeDeadlineSeconds`` of the invasive Job (``AUTOPILOT_INVASIVE_DEADLINE``): image pull, start and a
    DCGM level-3 run (at most 40 min) must fit; past it the Job fails and the node leaves ``TESTING``."""

    pvc_namespace: str = ""
    """Namespace where the ``pvc`` check creates its claim (``AUTOPILOT_PVC_NAMESPACE``); empty: ``namespace``."""

    pvc_deadline_s: float = 120.0
    """How long the ``pvc`` check waits for Bound (``AUTOPILOT_PVC_DEADLINE``; upstream waited about 2 min)."""

    pvc_access_mode: str = "ReadWriteOnce"
    """Access mode of the ``pvc`` check's claim (``AUTOPILOT_PVC_ACCESS_MODE``; upstream hard-coded ReadWriteMany)."""

    @property
    def uses_cluster(self) -> bool:
        """Whether labels, conditions, events and Jobs go to Kubernetes."""
        if self.cluster == "auto":
            return self.in_cluster or bool(self.kubeconfig)
        return self.cluster == "on"

    @property
    def live_after_s(self) -> float:
        """A node whose last heartbeat is older than this is not live."""
        return 3 * self.heartbeat_interval_s

    @property
    def stale_after_s(self) -> float:
        """Results older than three periodic intervals no longer count (ARCHITECTURE.md 4.2)."""
        return 3 * self.periodic_interval_s if self.periodic_interval_s > 0 else float("inf")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping; raises ``ConfigError`` naming the variable."""
        return cls(**_read(environ))


# (field, primary variable, aliases, parser). The parser gets (text, variable name).
def _int_in(lo: int, hi: int) -> Any:
    def parse(text: str, var: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise errors.BadParameter(var, f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise errors.BadParameter(var, f"must be between {lo} and {hi}: {value}")
        return value

    return parse


def _duration(text: str, var: str) -> float:
    return parse_duration(text, field=var)


def _positive_duration(text: str, var: str) -> float:
    value = parse_duration(text, field=var)
    if value <= 0:
        raise errors.BadParameter(var, f"must be more than 0: {text!r}")
    return value


def _namespace(text: str, var: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
        raise errors.BadParameter(var, f"not a valid namespace (DNS-1123 label): {value[:80]!r}")
    return value


def _choice(text: str, var: str, allowed: tuple[str, ...]) -> str:
    value = text.strip()
    if value not in allowed:
        raise errors.BadParameter(var, f"must be one of {', '.join(allowed)}: {value[:80]!r}")
    return value


def _tolerations(text: str, var: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of Kubernetes tolerations; only their documented keys, with string/int values."""
    try:
        raw = json.loads(text) if text.strip() else []
    except ValueError as exc:
        raise errors.BadParameter(var, f"not JSON: {exc}") from None
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    if not isinstance(raw, list) or not all(isinstance(t, dict) and set(t) <= allowed for t in raw):
        raise errors.BadParameter(var, f"expected a JSON list of tolerations with keys {sorted(allowed)}")
    for tol in raw:
        if tol.get("operator", "Equal") not in ("Equal", "Exists"):
            raise errors.BadParameter(var, f"toleration operator must be Equal or Exists: {tol!r}")
        if tol.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise errors.BadParameter(var, f"toleration effect is not a Kubernetes taint effect: {tol!r}")
    return tuple(raw)


_FIELDS: list[tuple[str, str, tuple[str, ...], Any]] = [
    ("node_name", "AUTOPILOT_NODE_NAME", ("NODE_NAME",), lambda t, v: t.strip()),
    ("redis_url", "AUTOPILOT_REDIS_URL", (), lambda t, v: t.strip()),
    ("periodic_checks", "AUTOPILOT_PERIODIC_CHECKS", ("PERIODIC_CHECKS",), lambda t, v: parse_list(t)),
    ("periodic_interval_s", "AUTOPILOT_PERIODIC_INTERVAL", (), _duration),
    ("invasive_interval_s", "AUTOPILOT_INVASIVE_INTERVAL", (), _duration),
    ("invasive_job_ttl_s", "AUTOPILOT_INVASIVE_JOB_TTLSEC", ("INVASIVE_JOB_TTLSEC",), _int_in(0, 7 * 86400)),
    ("pvc_storage_class", "AUTOPILOT_PVC_TEST_STORAGE_CLASS", ("PVC_TEST_STORAGE_CLASS",), lambda t, v: t.strip()),
    ("dcgm_fatal_errors", "AUTOPILOT_DCGM_FATAL_ERRORS", ("DCGM_FATAL_ERRORS",), lambda t, v: parse_list(t)),
    ("dcgm_level", "AUTOPILOT_DCGM_LEVEL", (), _int_in(1, 4)),
    ("pciebw_threshold_gbps", "AUTOPILOT_PCIEBW_THRESHOLD_GBPS", (), lambda t, v: parse_float(t, field=v, minimum=0)),
    ("gpumem_thresholds", "AUTOPILOT_GPUMEM_THRESHOLDS", (), lambda t, v: parse_mapping(t, field=v)),
    ("cuda_bin_dir", "AUTOPILOT_CUDA_BIN_DIR", (), lambda t, v: t.strip()),
    ("bandwidthtest_path", "AUTOPILOT_BANDWIDTHTEST_PATH", (), lambda t, v: t.strip()),
    ("check_timeouts", "AUTOPILOT_CHECK_TIMEOUTS", (), lambda t, v: parse_mapping(t, field=v)),
    ("api_token", "AUTOPILOT_API_TOKEN", (), lambda t, v: t.strip()),
    ("api_host", "AUTOPILOT_API_HOST", (), lambda t, v: t.strip()),
    ("api_port", "AUTOPILOT_API_PORT", (), _int_in(1, 65535)),
    ("api_max_waits", "AUTOPILOT_API_MAX_WAITS", (), _int_in(1, 1000)),
    ("api_redis_timeout_s", "AUTOPILOT_API_REDIS_TIMEOUT", (), _positive_duration),
    ("api_max_body", "AUTOPILOT_API_MAX_BODY", (), _int_in(1024, 1024**3)),
    ("metrics_interval_s", "AUTOPILOT_METRICS_INTERVAL", (), _duration),
    ("history_len", "AUTOPILOT_HISTORY_LEN", (), _int_in(1, 100_000)),
    ("run_ttl_s", "AUTOPILOT_RUN_TTL", (), _duration),
    ("node_deadline_s", "AUTOPILOT_NODE_DEADLINE", (), _duration),
    ("network_interfaces", "AUTOPILOT_NETWORK_INTERFACES", (), lambda t, v: parse_list(t)),
    ("podinfo_annotations", "AUTOPILOT_PODINFO_ANNOTATIONS", (), lambda t, v: t.strip()),
    ("heartbeat_interval_s", "AUTOPILOT_HEARTBEAT_INTERVAL", (), _duration),
    ("reconcile_interval_s", "AUTOPILOT_RECONCILE_INTERVAL", (), _duration),
    ("worker_concurrency", "AUTOPILOT_WORKER_CONCURRENCY", (), _int_in(1, 64)),
    ("cluster", "AUTOPILOT_CLUSTER", (), lambda t, v: _choice(t, v, ("auto", "on", "off"))),
    ("kubeconfig", "AUTOPILOT_KUBECONFIG", ("KUBECONFIG",), lambda t, v: t.strip()),
    ("in_cluster", "KUBERNETES_SERVICE_HOST", (), lambda t, v: bool(t.strip())),
    ("namespace", "AUTOPILOT_NAMESPACE", ("POD_NAMESPACE",), lambda t, v: _namespace(t, v)),
    ("image", "AUTOPILOT_IMAGE", (), lambda t, v: t.strip()),
    ("invasive_tolerations", "AUTOPILOT_INVASIVE_TOLERATIONS", (), lambda t, v: _tolerations(t, v)),
    ("invasive_deadline_s", "AUTOPILOT_INVASIVE_DEADLINE", (), _duration),
    ("pvc_namespace", "AUTOPILOT_PVC_NAMESPACE", (), lambda t, v: _namespace(t, v) if t.strip() else ""),
    ("pvc_deadline_s", "AUTOPILOT_PVC_DEADLINE", (), _duration),
    (
        "pvc_access_mode",
        "AUTOPILOT_PVC_ACCESS_MODE",
        (),
        lambda t, v: _choice(t, v, ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany")),
    ),
]


def variables() -> list[tuple[str, str, tuple[str, ...]]]:
    """(field, variable, aliases) for every setting: used by the docs generator and its test."""
    return [(f, var, aliases) for f, var, aliases, _ in _FIELDS]


def _read(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field, var, aliases, parse in _FIELDS:
        for name in (var, *aliases):
            text = environ.get(name)
            if text is not None and (text.strip() or field == "pvc_storage_class"):
                values[field] = parse(text, name)
                break
    if not values.get("node_name", "x"):
        values.pop("node_name")
    if "dcgm_fatal_errors" in values and not values["dcgm_fatal_errors"]:
        # An empty DCGM_FATAL_ERRORS means "use the defaults", as upstream documents.
        values.pop("dcgm_fatal_errors")
    return values

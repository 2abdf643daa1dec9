"""Settings: every ``AUTOPILOT_*`` environment variable, read once into a frozen object.

``Settings.from_env(os.environ)`` is called by each entry point at process start; nothing else
reads the environment. Upstream's variable names are accepted as aliases (ARCHITECTURE.md 4.4),
and every value is validated here, so a bad setting stops the process at start with a message
naming the variable instead of surfacing hours later in a periodic loop.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import logging
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autopilot import apivalidation, errors, names

# The parsers live in ``autopilot.parsing``; re-exported here, where settings and older callers find them.
from autopilot.parsing import (  # noqa: F401 - re-exported
    parse_bool,
    parse_duration,
    parse_float,
    parse_int,
    parse_list,
    parse_mapping,
    parse_number,
    parse_port,
)

if TYPE_CHECKING:
    from autopilot.registry import CheckRegistry

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MaxUnavailable:
    """``AUTOPILOT_REMEDIATE_MAX_UNAVAILABLE`` as read once at start: a count of nodes, or a percent."""

    count: int
    percent: bool = False

    @classmethod
    def parse(cls, text: str, *, field: str = "AUTOPILOT_REMEDIATE_MAX_UNAVAILABLE") -> MaxUnavailable:
        """A count (``2``) or a percent (``10%``, at most 100) of nodes; ``BadParameter`` naming ``field``."""
        value = text.strip()
        match = re.fullmatch(r"(\d{1,6})(%?)", value)
        if not match or (match.group(2) and int(match.group(1)) > 100):
            raise errors.BadParameter(field, f"expected a number of nodes or a percent up to 100%: {value[:80]!r}")
        return cls(int(match.group(1)), bool(match.group(2)))

    def budget(self, nodes: int) -> int:
        """Most of ``nodes`` held at once: the count, or the percent of ``nodes`` rounded down."""
        return nodes * self.count // 100 if self.percent else self.count

    def __str__(self) -> str:
        return f"{self.count}%" if self.percent else str(self.count)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Process-wide configuration. Field docstrings double as the configuration reference."""

    node_name: str = dataclasses.field(default_factory=socket.gethostname)
    """This node's name (``NODE_NAME``; default: the hostname)."""

    # repr=False: the URL may carry a password, and a logged or printed Settings must not show it.
    redis_url: str = dataclasses.field(default="", repr=False)
    """Broker and results store (``AUTOPILOT_REDIS_URL``: ``redis://``, ``rediss://`` with TLS, ``unix://``, or
    Sentinels as ``sentinel://h1:26379;sentinel://h2:26379/0``; another scheme stops the start); empty:
    ``autopilot up`` starts its own."""

    redis_password: str = dataclasses.field(default="", repr=False)  # a secret: never in a repr or a log
    """Redis password (``AUTOPILOT_REDIS_PASSWORD``), used when the URL has none; the chart sets it from a Secret."""

    redis_tls_ca: str = ""
    """CA bundle of the Redis server's certificate, ``rediss://`` (``AUTOPILOT_REDIS_TLS_CA``); empty: the system's."""

    redis_sentinel_master: str = "mymaster"
    """Name of the Sentinel-monitored master, for ``sentinel://`` URLs (``AUTOPILOT_REDIS_SENTINEL_MASTER``)."""

    redis_sentinel_password: str = dataclasses.field(default="", repr=False)
    """Password of the Sentinel processes themselves (``AUTOPILOT_REDIS_SENTINEL_PASSWORD``); empty: none."""

    flower_basic_auth: str = dataclasses.field(default="", repr=False)
    """Flower's logins, ``user:password[,user2:password2]`` (``AUTOPILOT_FLOWER_BASIC_AUTH``); empty: loopback only."""

    periodic_checks: tuple[str, ...] = ("pciebw", "remapped", "dcgm", "ping", "gpupower")
    """Checks run every periodic interval (``AUTOPILOT_PERIODIC_CHECKS``, alias ``PERIODIC_CHECKS``); a name that
    is not a check stops the process."""

    periodic_interval_s: float = 3600.0
    """Seconds between periodic runs (``AUTOPILOT_PERIODIC_INTERVAL``: ``1h``, ``30m``; ``0`` disables)."""

    invasive_interval_s: float = 4 * 3600.0
    """Seconds between invasive DCGM level-3 runs (``AUTOPILOT_INVASIVE_INTERVAL``; ``0`` disables)."""

    invasive_job_ttl_s: int = 30
    """TTL of finished invasive Jobs (``AUTOPILOT_INVASIVE_JOB_TTLSEC``, alias ``INVASIVE_JOB_TTLSEC``); the Job gets at
    least 300 s (``invasive.MIN_JOB_TTL_S``), so that its result outlives the worker's polls (it deletes the Job once
    read)."""

    pvc_storage_class: str = ""
    """Storage class the ``pvc`` check provisions (``PVC_TEST_STORAGE_CLASS``, a DNS-1123 subdomain); empty: ``pvc``
    is skipped."""

    dcgm_fatal_errors: tuple[str, ...] = ("PCIe", "NVLink", "ECC", "GPU Memory")
    """DCGM test categories whose failure evicts the node (``DCGM_FATAL_ERRORS``, comma-separated)."""

    dcgm_level: int = 1
    """``dcgmi diag -r`` level of the periodic ``dcgm`` check (``AUTOPILOT_DCGM_LEVEL``, 1..4)."""

    pciebw_threshold_gbps: float = 4.0
    """Minimum host-to-device bandwidth in GB/s, gigabytes per second (``AUTOPILOT_PCIEBW_THRESHOLD_GBPS``)."""

    gpu_cv_threshold_pct: float = 5.0
    """Coefficient of variation (%) of samples above which GPU figures warn (``AUTOPILOT_GPU_CV_THRESHOLD_PCT``)."""

    gpumem_thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Override of the per-model ``gpumem`` thresholds: ``h2d_gbps=4,daxpy_gbps=1300,dgemm_tflops=16``; another
    key stops the process."""

    baseline_window: int = 1000
    """Figures kept per fleet cohort (GPU model, driver major, check, metric) for its baseline
    (``AUTOPILOT_BASELINE_WINDOW``; ``0`` turns fleet-relative judgement off)."""

    baseline_min_samples: int = 50
    """Figures a cohort needs before its baseline judges anyone (``AUTOPILOT_BASELINE_MIN_SAMPLES``); below it
    only the fixed floors do."""

    baseline_deviations: float = 4.0
    """How many robust deviations (scaled MAD) below the cohort's median a figure must be to be slow
    (``AUTOPILOT_BASELINE_DEVIATIONS``)."""

    baseline_min_drop_pct: float = 10.0
    """How many percent below the cohort's median a figure must also be to be slow
    (``AUTOPILOT_BASELINE_MIN_DROP_PCT``)."""

    baseline_max_cohorts: int = 1000
    """Cohorts kept in Redis; the one updated longest ago is dropped first (``AUTOPILOT_BASELINE_MAX_COHORTS``)."""

    cuda_bin_dir: str = "/usr/local/lib/autopilot"
    """Where the ``cuda_src`` programs (``ap-bandwidth``, ``ap-gpumem``) are installed."""

    bandwidthtest_path: str = ""
    """Optional NVIDIA ``bandwidthTest`` binary; when set ``pciebw`` uses it instead of ``ap-bandwidth``."""

    expect_gpus: int = 0
    """GPUs this node must have (``AUTOPILOT_EXPECT_GPUS``); 0: only the Node's allocatable ``nvidia.com/gpu``,
    NVIDIA PCI functions in sysfs and ``/dev/nvidia<N>`` say. A node expected to have GPUs gets ``error`` (not
    ``skipped``) on every GPU check when NVML cannot start, and a fatal ``fail`` when GPUs are missing."""

    check_timeouts: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Per-check timeout overrides in seconds: ``dcgm=900,pciebw=120`` (``AUTOPILOT_CHECK_TIMEOUTS``); a key that
    is not a check stops the process."""

    api_token: str = dataclasses.field(default="", repr=False)  # a secret: never in a repr or a log
    """Bearer token the API requires when set (``AUTOPILOT_API_TOKEN``, visible ASCII without spaces); the CLI client
    sends it."""

    api_url: str = ""
    """The API the CLI client (``autopilot status``, ``autopilot nodes``) talks to (``AUTOPILOT_API_URL``; empty:
    http://127.0.0.1:3333); ``--url`` overrides it. ``http(s)://host[:port]`` without credentials (use the token)."""

    log_level: str = "WARNING"
    """Log level of the ``autopilot`` CLI (``AUTOPILOT_LOG_LEVEL``: DEBUG, INFO, WARNING, ERROR or CRITICAL);
    ``--log-level`` overrides it."""

    extra_checks: tuple[str, ...] = ()
    """Python modules imported after the built-in checks, each registering more checks (``AUTOPILOT_EXTRA_CHECKS``,
    comma-separated module names; tests give worker processes checks whose timing they control; production
    leaves it empty)."""

    api_host: str = ""
    """Address the API binds (``AUTOPILOT_API_HOST``: an IP address or host name); empty: 127.0.0.1 without a token,
    0.0.0.0 with one."""

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
    """How long run records live in Redis after their last write (``AUTOPILOT_RUN_TTL``)."""

    run_keep: int = 200
    """Runs kept in Redis whatever their age (``AUTOPILOT_RUN_KEEP``): when a run is made, the oldest runs past
    their deadline beyond this many are deleted, so run records cost at most about this many runs' results
    (a run over every node holds one result per node and check) however often runs are made."""

    node_deadline_s: float = 60.0
    """Default deadline for one node's answer in an API gather (``AUTOPILOT_NODE_DEADLINE``), 1 s to 2 h as a
    request's own ``deadline``."""

    network_interfaces: tuple[str, ...] = ()
    """Interfaces the network checks use (``AUTOPILOT_NETWORK_INTERFACES``, comma-separated; empty: every one
    a node reports except loopback)."""

    ping_mtu: int = 0
    """The MTU the nodes' network is meant to carry end to end (``AUTOPILOT_PING_MTU``, e.g. 9000 for jumbo frames;
    ``0``: off). When set, ``ping`` also pings each peer that answers with Don't-Fragment and a payload that fills
    this MTU, and fails an interface of the node whose own MTU is below it (docs/RESULTS.md); 576 to 65535. The
    check's ``mtu`` parameter replaces it for one run."""

    podinfo_annotations: str = "/etc/podinfo/annotations"
    """Downward-API file of the worker pod's annotations (``AUTOPILOT_PODINFO_ANNOTATIONS``): its Multus
    ``k8s.v1.cni.cncf.io/network-status`` names the secondary interfaces; a missing file is ignored."""

    heartbeat_interval_s: float = 15.0
    """How often a worker writes its node record (``AUTOPILOT_HEARTBEAT_INTERVAL``); a node unseen for
    three intervals is lost (``AUTOPILOT_NODE_LOST_AFTER``)."""

    node_lost_after_s: float = 0.0
    """A node whose worker has not heartbeated for this long is lost (``AUTOPILOT_NODE_LOST_AFTER``): its verdict
    is ``UNKNOWN`` ("no heartbeat since <time>") unless it is evicted, and cluster-wide answers list it as
    ``unreachable``; ``0``: three heartbeat intervals."""

    clock_skew_warn_s: float = 300.0
    """A node whose worker's clock is off the store's (Redis ``TIME``) by more than this says so among its reasons,
    with the offset (``AUTOPILOT_CLOCK_SKEW_WARN``; ``0``: never said). Informational: the offset, measured at each
    heartbeat, is taken off the node's stamps, so its verdict is judged as any node's (docs/RESULTS.md)."""

    node_retention_s: float = 86400.0
    """How long a lost node whose Node object is gone from the cluster (without a cluster: any lost node) is kept
    before its results and state are forgotten (``AUTOPILOT_NODE_RETENTION``; ``0``: at the first reconcile)."""

    liveness_file: str = ""
    """Heartbeat file of the worker's and beat's liveness probe (``AUTOPILOT_LIVENESS_FILE``, an absolute path; empty:
    none written). The worker's event loop, or beat's scheduler, touches it every ``AUTOPILOT_LIVENESS_INTERVAL``;
    ``autopilot probe`` fails when it is older than ``AUTOPILOT_LIVENESS_MAX_AGE`` while the broker answers."""

    liveness_interval_s: float = 10.0
    """How often the worker's event loop and beat's scheduler touch ``AUTOPILOT_LIVENESS_FILE``
    (``AUTOPILOT_LIVENESS_INTERVAL``); beat wakes at least this often to do so."""

    liveness_max_age_s: float = 120.0
    """The oldest heartbeat ``autopilot probe`` takes for a live process (``AUTOPILOT_LIVENESS_MAX_AGE``); several
    ``AUTOPILOT_LIVENESS_INTERVAL``s, so that a busy machine's late mark is no restart (one or less is refused)."""

    wedge_margin_s: float = 300.0
    """How long past what its task may take (its checks' timeouts, a level-3 Job's ``AUTOPILOT_INVASIVE_DEADLINE``
    and 3 min) a worker thread may hold that task (``AUTOPILOT_WEDGE_MARGIN``). When every thread of a worker holds
    its task that long, the worker is wedged: it stops marking ``AUTOPILOT_LIVENESS_FILE`` and says so in its node
    record (``wedged_since``), which stops its heartbeat's ``last_seen`` (docs/RELIABILITY.md)."""

    reconcile_interval_s: float = 30.0
    """How often beat recomputes verdicts and labels and sweeps stale results (``AUTOPILOT_RECONCILE_INTERVAL``)."""

    confirm_need: int = 2
    """Bad results among the last ``confirm_window`` that confirm a failure that can be noise
    (``AUTOPILOT_CONFIRM_NEED``; ``1`` acts on the first). Never-noise signals (fatal fails, errors) act at once."""

    confirm_window: int = 3
    """How many of a check's latest results ``confirm_need`` counts over (``AUTOPILOT_CONFIRM_WINDOW``)."""

    recover_passes: int = 2
    """Consecutive passes that take a check's counted failure back to good, WARN to PASS (``AUTOPILOT_RECOVER_PASSES``;
    ``1``: the first pass)."""

    confirm_runs: bool = True
    """Re-run a pending or recovering check on its node at once instead of waiting for the next periodic run
    (``AUTOPILOT_CONFIRM_RUNS``)."""

    remediate_cordon: bool = False
    """On ``EVICT``, cordon the node (``AUTOPILOT_REMEDIATE_CORDON``; beat does it, within the budget)."""

    remediate_taint: bool = False
    """On ``EVICT``, add the taint ``autopilot.ibm.com/gpuhealth=EVICT:NoSchedule`` (``AUTOPILOT_REMEDIATE_TAINT``)."""

    remediate_max_unavailable: MaxUnavailable = MaxUnavailable(1)
    """Most nodes Autopilot keeps cordoned or tainted at once, a number or a percent of the GPU nodes rounded down
    (``AUTOPILOT_REMEDIATE_MAX_UNAVAILABLE``: ``2``, ``10%``); past it an evicted node is labelled only."""

    remediate_dry_run: bool = False
    """Log what remediation would do and change nothing (``AUTOPILOT_REMEDIATE_DRY_RUN``)."""

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
    """Namespace of Autopilot's own objects: invasive Jobs (``AUTOPILOT_NAMESPACE``, alias ``POD_NAMESPACE``, which
    the chart sets from the downward API). Node Events go to ``default``, the only namespace the API server
    accepts them in."""

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
    DCGM level-3 run (at most 40 min) must fit; past it the Job fails and the node leaves ``TESTING``. More than 0:
    ``0`` was a 1-second deadline, a Job that always failed."""

    invasive_admission_wait_s: float = 300.0
    """How long the invasive Job may wait for its pod while admission refuses it with a refusal that can clear
    (``AUTOPILOT_INVASIVE_ADMISSION_WAIT``): a ResourceQuota's ``exceeded quota`` (usage that drops as other pods
    end; the Job controller retries with backoff), or the API server's own trouble (a 500 such as a webhook that did
    not answer, a quota update conflict). The node stays ``TESTING`` (cordoned and tainted where
    remediation holds it) meanwhile, so it is minutes, never past ``invasive_deadline_s``; ``0``: end at the
    first refusal. A refusal that never clears (PodSecurity, a quota's ``must specify``, a request above a
    quota's limit, a webhook's denial, LimitRange) ends the run at once."""

    pvc_namespace: str = ""
    """Namespace where the ``pvc`` check creates its claim (``AUTOPILOT_PVC_NAMESPACE``); empty: ``namespace``."""

    pvc_deadline_s: float = 120.0
    """How long the ``pvc`` check waits for Bound (``AUTOPILOT_PVC_DEADLINE``; upstream waited about 2 min)."""

    pvc_access_mode: str = "ReadWriteOnce"
    """Access mode of the ``pvc`` check's claim (``AUTOPILOT_PVC_ACCESS_MODE``; upstream hard-coded ReadWriteMany)."""

    events_follower: bool = True
    """Follow the kernel log, NVML events and error counters in every worker and turn faults into ``events``
    results at once (``AUTOPILOT_EVENTS_FOLLOWER``); ``false`` leaves only the periodic checks."""

    events_poll_interval_s: float = 5.0
    """How often the follower polls the error counters (ECC, row remap, NVLink, PCIe replay, InfiniBand)
    (``AUTOPILOT_EVENTS_POLL_INTERVAL``); 0 disables the polling."""

    events_storm_window_s: float = 60.0
    """The same code on the same device within this window is one finding with a count
    (``AUTOPILOT_EVENTS_STORM_WINDOW``)."""

    kmsg_path: str = "/dev/kmsg"
    """The kernel log the follower reads (``AUTOPILOT_KMSG_PATH``)."""

    infiniband_sysfs: str = "/sys/class/infiniband"
    """Where the follower reads InfiniBand port state and counters (``AUTOPILOT_INFINIBAND_SYSFS``)."""

    device_taints: str = "off"
    """One DRA DeviceTaintRule per bad GPU (``AUTOPILOT_DEVICE_TAINTS``): ``off``, ``dry-run`` (only logs what it would
    create or delete) or ``on``; effect ``NoSchedule`` for an EVICT GPU, ``None`` for a WARN one. Needs a cluster that
    serves ``resource.k8s.io`` DeviceTaintRule and RBAC on ``deviceTaintRules``."""

    device_taint_driver: str = "gpu.nvidia.com"
    """DRA driver whose devices the rules select (``AUTOPILOT_DEVICE_TAINT_DRIVER``); the pool is the node's name."""

    device_taint_device: str = "gpu-{index}"
    """Name of a GPU's DRA device (``AUTOPILOT_DEVICE_TAINT_DEVICE``), ``{index}`` standing for its index: NVIDIA's DRA
    driver publishes ``gpu-0``, ``gpu-1``, ..."""

    gpu_history_len: int = 500
    """Incidents kept per GPU (``AUTOPILOT_GPU_HISTORY_LEN``); older ones are dropped first."""

    gpu_history_retention_s: float = 90 * 86400.0
    """How long a GPU's incidents are kept (``AUTOPILOT_GPU_HISTORY_RETENTION``); a GPU not heard of for this long is
    forgotten."""

    gpu_repeat_count: int = 3
    """Fault incidents within ``AUTOPILOT_GPU_REPEAT_WINDOW`` that make a GPU a repeat offender
    (``AUTOPILOT_GPU_REPEAT_COUNT``; 0: never)."""

    gpu_repeat_window_s: float = 7 * 86400.0
    """The window of ``AUTOPILOT_GPU_REPEAT_COUNT`` (``AUTOPILOT_GPU_REPEAT_WINDOW``, e.g. ``7d``)."""

    unmeasured_after_s: float = 7 * 86400.0
    """A GPU whose ``pciebw``/``gpumem`` figure has gone unmeasured (skipped as in use by others, or errored)
    longer than this says so among its reasons, e.g. "pciebw not measured for 9 d (in use by others)";
    informational, its verdict unchanged (``AUTOPILOT_UNMEASURED_AFTER``; 0: never said)."""

    @property
    def uses_cluster(self) -> bool:
        """Whether labels, conditions, events and Jobs go to Kubernetes."""
        if self.cluster == "auto":
            return self.in_cluster or bool(self.kubeconfig)
        return self.cluster == "on"

    @property
    def live_after_s(self) -> float:
        """A node whose last heartbeat is older than this is not live: it is lost (``node_lost_after_s``)."""
        return self.node_lost_after_s if self.node_lost_after_s > 0 else 3 * self.heartbeat_interval_s

    @property
    def stale_after_s(self) -> float:
        """Results older than three periodic intervals no longer count (ARCHITECTURE.md 4.2)."""
        return 3 * self.periodic_interval_s if self.periodic_interval_s > 0 else float("inf")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], checks: CheckRegistry | None = None) -> Settings:
        """Build settings from an environment mapping; raises ``ConfigError`` naming the variable.
        Check names are validated against ``checks`` (None: the shipped checks and the extra modules)."""
        return cls(**_read(environ, checks))

    @classmethod
    def one(cls, environ: Mapping[str, str], field: str) -> Any:
        """One setting, read and validated as ``from_env`` would, without the others: for a tool (the
        CLI client) that needs only it and must not fail on a setting it does not use."""
        for name, var, aliases, parse in _FIELDS:
            if name == field:
                for variable in (var, *aliases):
                    text = environ.get(variable)
                    if text is not None and text.strip():
                        return parse(text, variable)
                return getattr(cls(), field)
        raise KeyError(field)


# (field, primary variable, aliases, parser). The parser gets (text, variable name).
def _pct(text: str, var: str) -> float:
    value = parse_float(text, field=var, minimum=0)
    if value >= 100:
        raise errors.BadParameter(var, f"must be a percentage below 100: {text!r}")
    return value


# A ping MTU: 0 (off), or IPv4's minimum datagram (RFC 791) up to the largest IP packet.
PING_MTU_MIN, PING_MTU_MAX = 576, 65535


def ping_mtu(text: str, *, field: str) -> int:
    """``AUTOPILOT_PING_MTU`` or the ``mtu`` parameter: 0, or 576..65535; ``BadParameter`` naming ``field``."""
    try:
        value = parse_int(text.strip(), field=field)
    except errors.BadParameter:
        raise errors.BadParameter(field, f"not an integer: {text[:64]!r}") from None
    if value != 0 and not PING_MTU_MIN <= value <= PING_MTU_MAX:
        raise errors.BadParameter(field, f"must be 0 (off) or between {PING_MTU_MIN} and {PING_MTU_MAX}: {value}")
    return value


def _int_in(lo: int, hi: int) -> Any:
    def parse(text: str, var: str) -> int:
        try:
            value = parse_int(text.strip(), field=var)
        except errors.BadParameter:
            raise errors.BadParameter(var, f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise errors.BadParameter(var, f"must be between {lo} and {hi}: {value}")
        return value

    return parse


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _modules(text: str, var: str) -> tuple[str, ...]:
    found = tuple(parse_list(text))
    for module in found:
        if not _MODULE.fullmatch(module):
            raise errors.BadParameter(var, f"not a module name: {module[:80]!r}")
    return found


def log_level(text: str, var: str) -> str:
    """A level name of ``LOG_LEVELS``, any case; ``BadParameter`` naming ``var`` otherwise."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise errors.BadParameter(var, f"not a log level ({', '.join(LOG_LEVELS)}): {text[:40]!r}")
    return level


def _duration(text: str, var: str) -> float:
    return parse_duration(text, field=var)


def _positive_duration(text: str, var: str) -> float:
    value = parse_duration(text, field=var)
    if value <= 0:
        raise errors.BadParameter(var, f"must be more than 0: {text!r}")
    return value


def liveness_file(text: str, var: str) -> str:
    """An absolute path (the probe runs from wherever the kubelet starts it), or "" for none."""
    value = text.strip()
    if value and (not os.path.isabs(value) or "\x00" in value or len(value) > 4096):
        raise errors.BadParameter(var, f"not an absolute path: {value[:80]!r}")
    return value


# The range a request's own ``deadline`` is held to (api/inputs.py): a default outside it would
# let a request that names no deadline wait on a silent node for longer than any request may ask.
NODE_DEADLINE_RANGE_S = (1.0, 7200.0)


def _node_deadline(text: str, var: str) -> float:
    value = parse_duration(text, field=var)
    lo, hi = NODE_DEADLINE_RANGE_S
    if not lo <= value <= hi:
        raise errors.BadParameter(var, f"must be between {lo:g} and {hi:g} seconds: {text[:64]!r}")
    return value


REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")


def _redis_url(text: str, var: str) -> str:
    """A URL the broker and the store open; the message names the scheme only, since the URL may hold a password."""
    value = text.strip()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in REDIS_SCHEMES or not rest or any(c.isspace() or ord(c) < 32 for c in value):
        shown = scheme[:16] if sep else "none"
        raise errors.BadParameter(
            var, f"not a Redis URL (scheme {shown!r}; expected one of {', '.join(REDIS_SCHEMES)})"
        )
    return value


def bind_address(text: str, var: str) -> str:
    """An address to listen on: an IP address or a host name, never anything a socket library would misread."""
    value = text.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        # A host name: DNS labels (any case) of at most 63 characters, 253 in all.
        if len(value) > 253 or not all(names.is_dns1123_label(part) for part in value.lower().split(".")):
            raise errors.BadParameter(var, f"not an IP address or host name: {value[:80]!r}") from None
    return value


def api_url(text: str, *, field: str) -> str:
    """Where the CLI finds the API: ``http(s)://host[:port][/prefix]``, without credentials (a token goes in
    ``AUTOPILOT_API_TOKEN``; a password in the URL would be printed with every error that names it).
    ``BadParameter`` naming ``field``, with any credentials shown as ``***``."""
    value = text.strip()
    scheme, sep, rest = value.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    credentials = "@" in authority
    shown = f"{scheme}://***@{rest.partition('@')[2]}" if credentials else value
    shown = shown[:80].encode("unicode_escape").decode("ascii")  # control characters as \x1b, never raw
    if credentials:
        raise errors.BadParameter(field, f"credentials in the URL are not accepted (use a token): {shown}")
    try:
        parts = urllib.parse.urlsplit(value)
        # .port raises ValueError for one that is not a number in 0..65535
        good = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        good = False
    if not sep or not good:
        raise errors.BadParameter(field, f"expected http(s)://host:port, got {shown}")
    if any(ord(c) < 33 or ord(c) == 127 for c in value):
        raise errors.BadParameter(field, f"control characters or spaces in {shown}")
    return value


def bearer_token(text: str, *, field: str) -> str:
    """A bearer token: visible ASCII only (RFC 6750's token characters are a subset), since a newline or a
    control character cannot travel in an ``Authorization`` header. The message never shows the token."""
    value = text.strip()
    if any(not 33 <= ord(c) <= 126 for c in value):
        raise errors.BadParameter(
            field, "a bearer token is visible ASCII characters only (no spaces or control characters)"
        )
    return value


def _namespace(text: str, var: str) -> str:
    value = text.strip()
    if not names.is_dns1123_label(value):
        raise errors.BadParameter(var, f"not a valid namespace (DNS-1123 label): {value[:80]!r}")
    return value


def _sentinel_master(text: str, var: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise errors.BadParameter(var, f"not a Sentinel master name: {value[:80]!r}")
    return value


def _logins(text: str, var: str) -> str:
    """``user:password`` pairs, comma-separated, as Flower's ``--basic-auth`` takes them."""
    value = text.strip()
    for login in value.split(","):
        user, sep, password = login.partition(":")
        if not (sep and user and password) or any(c.isspace() for c in login):
            # The value itself is a secret: the message names the variable, never the text.
            raise errors.BadParameter(var, "expected user:password[,user:password] without spaces")
    return value


def _dns_subdomain(text: str, var: str) -> str:
    value = text.strip()
    if not names.is_dns1123_subdomain(value):
        raise errors.BadParameter(var, f"not a DNS-1123 subdomain: {value[:80]!r}")
    return value


def _device_template(text: str, var: str) -> str:
    """A DRA device name with ``{index}``: what is left once it is filled must be a DNS-1123 label."""
    value = text.strip()
    if "{index}" not in value or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?", value.replace("{index}", "0")):
        raise errors.BadParameter(var, f"must name the device with {{index}}, e.g. gpu-{{index}}: {value[:80]!r}")
    return value


def _choice(text: str, var: str, allowed: tuple[str, ...]) -> str:
    value = text.strip()
    if value not in allowed:
        raise errors.BadParameter(var, f"must be one of {', '.join(allowed)}: {value[:80]!r}")
    return value


def _max_unavailable(text: str, var: str) -> MaxUnavailable:
    return MaxUnavailable.parse(text, field=var)


def _tolerations(text: str, var: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of Kubernetes tolerations; only their documented keys, with string/int values."""
    try:
        raw = json.loads(text) if text.strip() else []
    except ValueError as exc:
        raise errors.BadParameter(var, f"not JSON: {exc}") from None
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    if not isinstance(raw, list) or not all(isinstance(t, dict) and set(t) <= allowed for t in raw):
        raise errors.BadParameter(var, f"expected a JSON list of tolerations with keys {sorted(allowed)}")
    # The API server's own rules (validateTolerations): a toleration it refuses would make every
    # invasive Job and consumer pod a 422, so it is refused here, at start.
    problems = apivalidation.tolerations_problems(raw, "tolerations")
    if problems:
        raise errors.BadParameter(var, "; ".join(problems))
    return tuple(raw)


def load_checks(environ: Mapping[str, str]) -> CheckRegistry:
    """The process's check registry: the built-in checks plus the modules of ``AUTOPILOT_EXTRA_CHECKS``
    in ``environ`` (``registry.shipped``), for an entry point assembling its process."""
    from autopilot import registry  # when called, not at the top: the checks import this module

    return registry.shipped(Settings.one(environ, "extra_checks"))


def _known_checks(values: Mapping[str, Any], used: Mapping[str, str], checks: CheckRegistry | None) -> None:
    """A check name that ``checks`` does not hold, in a list or as a map key, stops the process: it would
    otherwise never run (or never apply) without a word. ``checks`` None: settings loaded at a process's
    start, which assembles its registry here (``registry.shipped`` with the extra modules)."""
    if "periodic_checks" not in values and "check_timeouts" not in values:
        return  # the defaults name built-in checks: no need to import every check to know it
    if checks is None:
        from autopilot import registry

        checks = registry.shipped(values.get("extra_checks", ()))
    known = checks.names()
    for field, given in (
        ("periodic_checks", values.get("periodic_checks", ())),
        ("check_timeouts", values.get("check_timeouts", {})),
    ):
        for name in given:
            if name not in known:
                raise errors.BadParameter(used[field], f"unknown check {name[:64]!r} (known: {', '.join(known)})")


def _gpumem_thresholds(text: str, var: str) -> dict[str, float]:
    from autopilot.checks import gpumem  # see _checks: the checks import this module

    return parse_mapping(text, field=var, keys=gpumem.KEYS)


_FIELDS: list[tuple[str, str, tuple[str, ...], Any]] = [
    ("node_name", "AUTOPILOT_NODE_NAME", ("NODE_NAME",), lambda t, v: t.strip()),
    ("redis_url", "AUTOPILOT_REDIS_URL", (), _redis_url),
    ("redis_password", "AUTOPILOT_REDIS_PASSWORD", (), lambda t, v: t.strip()),
    ("redis_tls_ca", "AUTOPILOT_REDIS_TLS_CA", (), lambda t, v: t.strip()),
    ("redis_sentinel_master", "AUTOPILOT_REDIS_SENTINEL_MASTER", (), lambda t, v: _sentinel_master(t, v)),
    ("redis_sentinel_password", "AUTOPILOT_REDIS_SENTINEL_PASSWORD", (), lambda t, v: t.strip()),
    ("flower_basic_auth", "AUTOPILOT_FLOWER_BASIC_AUTH", (), lambda t, v: _logins(t, v)),
    ("periodic_checks", "AUTOPILOT_PERIODIC_CHECKS", ("PERIODIC_CHECKS",), lambda t, v: parse_list(t)),
    ("periodic_interval_s", "AUTOPILOT_PERIODIC_INTERVAL", (), _duration),
    ("invasive_interval_s", "AUTOPILOT_INVASIVE_INTERVAL", (), _duration),
    ("invasive_job_ttl_s", "AUTOPILOT_INVASIVE_JOB_TTLSEC", ("INVASIVE_JOB_TTLSEC",), _int_in(0, 7 * 86400)),
    (
        "pvc_storage_class",
        "AUTOPILOT_PVC_TEST_STORAGE_CLASS",
        ("PVC_TEST_STORAGE_CLASS",),
        lambda t, v: _dns_subdomain(t, v) if t.strip() else "",
    ),
    ("dcgm_fatal_errors", "AUTOPILOT_DCGM_FATAL_ERRORS", ("DCGM_FATAL_ERRORS",), lambda t, v: parse_list(t)),
    ("dcgm_level", "AUTOPILOT_DCGM_LEVEL", (), _int_in(1, 4)),
    ("pciebw_threshold_gbps", "AUTOPILOT_PCIEBW_THRESHOLD_GBPS", (), lambda t, v: parse_float(t, field=v, minimum=0)),
    (
        "gpu_cv_threshold_pct",
        "AUTOPILOT_GPU_CV_THRESHOLD_PCT",
        (),
        lambda t, v: parse_float(t, field=v, minimum=0),
    ),
    ("gpumem_thresholds", "AUTOPILOT_GPUMEM_THRESHOLDS", (), lambda t, v: _gpumem_thresholds(t, v)),
    ("baseline_window", "AUTOPILOT_BASELINE_WINDOW", (), _int_in(0, 100_000)),
    ("baseline_min_samples", "AUTOPILOT_BASELINE_MIN_SAMPLES", (), _int_in(3, 100_000)),
    ("baseline_deviations", "AUTOPILOT_BASELINE_DEVIATIONS", (), lambda t, v: parse_float(t, field=v, minimum=0)),
    ("baseline_min_drop_pct", "AUTOPILOT_BASELINE_MIN_DROP_PCT", (), lambda t, v: _pct(t, v)),
    ("baseline_max_cohorts", "AUTOPILOT_BASELINE_MAX_COHORTS", (), _int_in(1, 100_000)),
    ("cuda_bin_dir", "AUTOPILOT_CUDA_BIN_DIR", (), lambda t, v: t.strip()),
    ("bandwidthtest_path", "AUTOPILOT_BANDWIDTHTEST_PATH", (), lambda t, v: t.strip()),
    ("expect_gpus", "AUTOPILOT_EXPECT_GPUS", (), _int_in(0, 1024)),
    ("check_timeouts", "AUTOPILOT_CHECK_TIMEOUTS", (), lambda t, v: parse_mapping(t, field=v)),
    ("api_token", "AUTOPILOT_API_TOKEN", (), lambda t, v: bearer_token(t, field=v)),
    ("api_host", "AUTOPILOT_API_HOST", (), bind_address),
    ("api_url", "AUTOPILOT_API_URL", (), lambda t, v: api_url(t, field=v)),
    ("log_level", "AUTOPILOT_LOG_LEVEL", (), log_level),
    ("extra_checks", "AUTOPILOT_EXTRA_CHECKS", (), _modules),
    ("api_port", "AUTOPILOT_API_PORT", (), lambda t, v: parse_port(t.strip(), field=v)),
    ("api_max_waits", "AUTOPILOT_API_MAX_WAITS", (), _int_in(1, 1000)),
    ("api_redis_timeout_s", "AUTOPILOT_API_REDIS_TIMEOUT", (), _positive_duration),
    ("api_max_body", "AUTOPILOT_API_MAX_BODY", (), _int_in(1024, 1024**3)),
    ("metrics_interval_s", "AUTOPILOT_METRICS_INTERVAL", (), _duration),
    ("history_len", "AUTOPILOT_HISTORY_LEN", (), _int_in(1, 100_000)),
    ("run_ttl_s", "AUTOPILOT_RUN_TTL", (), _duration),
    ("run_keep", "AUTOPILOT_RUN_KEEP", (), _int_in(1, 1_000_000)),
    ("node_deadline_s", "AUTOPILOT_NODE_DEADLINE", (), _node_deadline),
    ("network_interfaces", "AUTOPILOT_NETWORK_INTERFACES", (), lambda t, v: parse_list(t)),
    ("ping_mtu", "AUTOPILOT_PING_MTU", (), lambda t, v: ping_mtu(t, field=v)),
    ("podinfo_annotations", "AUTOPILOT_PODINFO_ANNOTATIONS", (), lambda t, v: t.strip()),
    ("heartbeat_interval_s", "AUTOPILOT_HEARTBEAT_INTERVAL", (), _duration),
    ("node_lost_after_s", "AUTOPILOT_NODE_LOST_AFTER", (), _duration),
    ("node_retention_s", "AUTOPILOT_NODE_RETENTION", (), _duration),
    ("clock_skew_warn_s", "AUTOPILOT_CLOCK_SKEW_WARN", (), _duration),
    ("liveness_file", "AUTOPILOT_LIVENESS_FILE", (), liveness_file),
    ("liveness_interval_s", "AUTOPILOT_LIVENESS_INTERVAL", (), _positive_duration),
    ("liveness_max_age_s", "AUTOPILOT_LIVENESS_MAX_AGE", (), _positive_duration),
    ("wedge_margin_s", "AUTOPILOT_WEDGE_MARGIN", (), _positive_duration),
    ("reconcile_interval_s", "AUTOPILOT_RECONCILE_INTERVAL", (), _duration),
    ("confirm_need", "AUTOPILOT_CONFIRM_NEED", (), _int_in(1, 50)),
    ("confirm_window", "AUTOPILOT_CONFIRM_WINDOW", (), _int_in(1, 50)),
    ("recover_passes", "AUTOPILOT_RECOVER_PASSES", (), _int_in(1, 50)),
    ("confirm_runs", "AUTOPILOT_CONFIRM_RUNS", (), lambda t, v: parse_bool(t, field=v)),
    ("remediate_cordon", "AUTOPILOT_REMEDIATE_CORDON", (), lambda t, v: parse_bool(t, field=v)),
    ("remediate_taint", "AUTOPILOT_REMEDIATE_TAINT", (), lambda t, v: parse_bool(t, field=v)),
    ("remediate_max_unavailable", "AUTOPILOT_REMEDIATE_MAX_UNAVAILABLE", (), lambda t, v: _max_unavailable(t, v)),
    ("remediate_dry_run", "AUTOPILOT_REMEDIATE_DRY_RUN", (), lambda t, v: parse_bool(t, field=v)),
    ("worker_concurrency", "AUTOPILOT_WORKER_CONCURRENCY", (), _int_in(1, 64)),
    ("cluster", "AUTOPILOT_CLUSTER", (), lambda t, v: _choice(t, v, ("auto", "on", "off"))),
    ("kubeconfig", "AUTOPILOT_KUBECONFIG", ("KUBECONFIG",), lambda t, v: t.strip()),
    ("in_cluster", "KUBERNETES_SERVICE_HOST", (), lambda t, v: bool(t.strip())),
    ("namespace", "AUTOPILOT_NAMESPACE", ("POD_NAMESPACE",), lambda t, v: _namespace(t, v)),
    ("image", "AUTOPILOT_IMAGE", (), lambda t, v: t.strip()),
    ("invasive_tolerations", "AUTOPILOT_INVASIVE_TOLERATIONS", (), lambda t, v: _tolerations(t, v)),
    ("invasive_deadline_s", "AUTOPILOT_INVASIVE_DEADLINE", (), _positive_duration),
    ("invasive_admission_wait_s", "AUTOPILOT_INVASIVE_ADMISSION_WAIT", (), _duration),
    ("pvc_namespace", "AUTOPILOT_PVC_NAMESPACE", (), lambda t, v: _namespace(t, v) if t.strip() else ""),
    ("pvc_deadline_s", "AUTOPILOT_PVC_DEADLINE", (), _duration),
    (
        "pvc_access_mode",
        "AUTOPILOT_PVC_ACCESS_MODE",
        (),
        lambda t, v: _choice(t, v, ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany")),
    ),
    ("events_follower", "AUTOPILOT_EVENTS_FOLLOWER", (), lambda t, v: parse_bool(t, field=v)),
    ("events_poll_interval_s", "AUTOPILOT_EVENTS_POLL_INTERVAL", (), _duration),
    ("events_storm_window_s", "AUTOPILOT_EVENTS_STORM_WINDOW", (), _duration),
    ("kmsg_path", "AUTOPILOT_KMSG_PATH", (), lambda t, v: t.strip()),
    ("infiniband_sysfs", "AUTOPILOT_INFINIBAND_SYSFS", (), lambda t, v: t.strip()),
    ("device_taints", "AUTOPILOT_DEVICE_TAINTS", (), lambda t, v: _choice(t, v, ("off", "dry-run", "on"))),
    ("device_taint_driver", "AUTOPILOT_DEVICE_TAINT_DRIVER", (), lambda t, v: _dns_subdomain(t, v)),
    ("device_taint_device", "AUTOPILOT_DEVICE_TAINT_DEVICE", (), lambda t, v: _device_template(t, v)),
    ("gpu_history_len", "AUTOPILOT_GPU_HISTORY_LEN", (), _int_in(1, 100_000)),
    ("gpu_history_retention_s", "AUTOPILOT_GPU_HISTORY_RETENTION", (), _duration),
    ("gpu_repeat_count", "AUTOPILOT_GPU_REPEAT_COUNT", (), _int_in(0, 10_000)),
    ("gpu_repeat_window_s", "AUTOPILOT_GPU_REPEAT_WINDOW", (), _duration),
    ("unmeasured_after_s", "AUTOPILOT_UNMEASURED_AFTER", (), _duration),
]


def variables() -> list[tuple[str, str, tuple[str, ...]]]:
    """(field, variable, aliases) for every setting: used by the docs generator and its test."""
    return [(f, var, aliases) for f, var, aliases, _ in _FIELDS]


# AUTOPILOT_* names that are not settings: the test suites' and the demo script's own switches.
# Set ("1") by ``autopilot up`` in the environment of the processes it starts: ``up`` has already named
# every unknown variable once, so its API, workers, beat and simulators do not name each again.
UP_CHILD = "AUTOPILOT_UP_CHILD"
NOT_SETTINGS = ("AUTOPILOT_E2E_", "AUTOPILOT_GPU_TESTS", "AUTOPILOT_FUZZ_EXAMPLES", "AUTOPILOT_DEMO_", UP_CHILD)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """(name, the setting it most resembles) for every ``AUTOPILOT_*`` variable that is no setting: a typo
    such as ``AUTOPILOT_PERIODIC_INTERVALL`` would otherwise leave the default in force without a word."""
    known = {name for _, var, aliases, _ in _FIELDS for name in (var, *aliases)}
    out: list[tuple[str, str | None]] = []
    for name in sorted(environ):
        if name.startswith("AUTOPILOT_") and name not in known and not name.startswith(NOT_SETTINGS):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            out.append((name, close[0] if close else None))
    return out


def _read(environ: Mapping[str, str], checks: CheckRegistry | None = None) -> dict[str, Any]:
    for name, close in unknown_variables(environ) if environ.get(UP_CHILD) != "1" else ():
        log.warning("%s is not a setting and is ignored%s", name, f" (did you mean {close}?)" if close else "")
    values: dict[str, Any] = {}
    used: dict[str, str] = {}  # field -> the variable it was read from (primary or alias)
    for field, var, aliases, parse in _FIELDS:
        for name in (var, *aliases):
            text = environ.get(name)
            if text is not None and (text.strip() or field == "pvc_storage_class"):
                values[field] = parse(text, name)
                used[field] = name
                break
    _known_checks(values, used, checks)
    if not values.get("node_name", "x"):
        values.pop("node_name")
    if values.get("confirm_need", 2) > values.get("confirm_window", 3):
        raise errors.BadParameter(
            "AUTOPILOT_CONFIRM_NEED", "cannot exceed AUTOPILOT_CONFIRM_WINDOW (N of the last M results)"
        )
    if values.get("liveness_max_age_s", Settings.liveness_max_age_s) <= values.get(
        "liveness_interval_s", Settings.liveness_interval_s
    ):
        # Between two marks the heartbeat's age reaches the interval: every live process would fail its probe.
        raise errors.BadParameter("AUTOPILOT_LIVENESS_MAX_AGE", "must be more than AUTOPILOT_LIVENESS_INTERVAL")
    if "dcgm_fatal_errors" in values and not values["dcgm_fatal_errors"]:
        # An empty DCGM_FATAL_ERRORS means "use the defaults", as upstream documents.
        values.pop("dcgm_fatal_errors")
    return values

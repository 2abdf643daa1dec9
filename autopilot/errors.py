"""The one exception tree of the core.

    AutopilotError
     +-- ConfigError            bad setting or parameter (the caller's fault; never retried)
     |    +-- BadParameter      one request/CLI parameter, names the field
     |    +-- UnknownCheck      a check name that is not registered
     +-- ParseError             a tool's output cannot be read with confidence
     +-- ToolError              an external program could not give an answer
     |    +-- ToolNotFound      the binary is not on PATH
     |    +-- ToolTimeout       it ran past its deadline and was killed with its children
     |    +-- ToolOutputTooLarge  it printed more than the runner keeps
     +-- GpuError               NVML said no (carries the NVML code when there is one)
     |    +-- GpuUnavailable    NVML could not start: skipped where no GPU is expected, else error
     |    +-- GpuLost           one GPU is out of service (NVML_ERROR_GPU_IS_LOST, RESET_REQUIRED,
     |                          INSUFFICIENT_POWER): a fatal fail for it
     +-- ClusterError           the Kubernetes API said no
     |    +-- NotFound, Conflict, Transient
     +-- StoreUnavailable       the results store or broker cannot be reached (API: 503)

Third-party exceptions are translated in the seam that meets them (``raise ... from exc``),
so nothing from pynvml, kubernetes or subprocess leaks past ``gpus``, ``cluster`` or
``commands``, nor anything from redis or kombu past the store (``workers/store.py``).
"""

from __future__ import annotations


class AutopilotError(Exception):
    """Root of every error the core raises on purpose."""


class ConfigError(AutopilotError):
    """A setting or parameter is invalid."""


class BadParameter(ConfigError):
    """One named parameter is invalid; ``field`` is what a 4xx body or CLI error names."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownCheck(BadParameter):
    """A check name that the registry does not hold."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__("check", f"unknown check {name!r} (known: {', '.join(known)})")
        self.name = name


class ParseError(AutopilotError):
    """Tool output that cannot be read with confidence (truncated, corrupted, unknown layout)."""


class ToolError(AutopilotError):
    """An external program could not produce an answer."""


class ToolNotFound(ToolError):
    """The program is not installed or not on PATH."""


class ToolTimeout(ToolError):
    """The program ran past its timeout and was killed together with its process group."""

    def __init__(self, argv0: str, timeout_s: float) -> None:
        super().__init__(f"{argv0} timed out after {timeout_s:g} s")
        self.timeout_s = timeout_s


class ToolOutputTooLarge(ToolError):
    """The program printed more than the command seam keeps of an output (``commands.OUTPUT_LIMIT_BYTES``):
    what it kept is a truncated answer, which a check must not judge."""

    def __init__(self, argv0: str, limit: int) -> None:
        super().__init__(f"{argv0} printed more than {limit // (1024 * 1024)} MiB on one output")
        self.limit = limit


class GpuError(AutopilotError):
    """NVML refused a query; ``code`` is the NVML return code when known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class GpuUnavailable(GpuError):
    """NVML could not start (no driver, no library, a driver/library mismatch); the message names why.

    On a node expected to have GPUs that is an ``error`` of every GPU check; elsewhere ``skipped``.
    """


class GpuLost(GpuError):
    """GPU ``index`` is out of service (a fatal ``fail`` for it): ``code`` is NVML's answer,
    ``NVML_ERROR_GPU_IS_LOST`` (15, fell off the bus) by default, ``NVML_ERROR_RESET_REQUIRED`` (16) or
    ``NVML_ERROR_INSUFFICIENT_POWER`` (8); ``gpus.OUT_OF_SERVICE`` says why these."""

    def __init__(self, index: int, message: str, code: int = 15) -> None:
        super().__init__(message, code)
        self.index = index


class ClusterError(AutopilotError):
    """The cluster API refused or failed a request."""


class NotFound(ClusterError):
    """The object does not exist."""


class Conflict(ClusterError):
    """The object changed underneath us (409) or already exists."""


class Transient(ClusterError):
    """A retryable failure (429, 5xx, connection reset)."""


class StoreUnavailable(AutopilotError):
    """The results store (or the broker beside it) could not be reached in time: retry later.

    Raised by the store's implementation in place of its client's connection and timeout errors,
    so callers (and the API, which answers 503) handle one exception whatever the backend.
    """

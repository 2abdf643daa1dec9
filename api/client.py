"""``autopilot status`` and ``autopilot nodes``: the command-line client of the API.

``status`` creates a run (``POST /api/v1/runs``), then long-polls it (``GET ...?wait=1``) with a
progress bar on stderr while nodes answer, and prints a table or the JSON report. Exit codes are
those of ``autopilot run``: 0 all ok, 1 a warn or fail, 3 an error, an unreachable or unknown
node, or no API; 2 a usage error (including a request the API rejects as bad).

Plain ``urllib`` with timeouts: the client needs no dependency beyond the package's own.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from api import text
from autopilot import config, errors, registry
from autopilot.render import cell as _cell
from autopilot.results import printable

EXIT_OK, EXIT_BAD, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:3333"
HTTP_TIMEOUT_S = 15.0
POLL_WAIT_S = 1
# How long past the run's own deadline the client keeps asking before it gives up.
GRACE_S = 30.0
# A run's status_url as the API writes it: the client appends it to --url, so nothing else is followed.
_RUN_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)*/api/v1/runs/[0-9a-f]{32}")

_STYLE = {
    "ok": "green",
    "skipped": "dim",
    "busy": "dim",
    "warn": "yellow",
    "fail": "bold red",
    "error": "magenta",
    "unreachable": "magenta",
    "unknown": "magenta",
    "pending": "dim",
}


class ClientError(Exception):
    """The API could not be reached or said no; ``code`` is the exit code to use. The message is made
    printable: it may carry an answer's words, which must not drive the terminal it is printed on."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(printable(message))
        self.code = code


def _unexpected(base: str, what: str) -> ClientError:
    return ClientError(f"the API at {base} sent {what} of an unexpected shape (is that an Autopilot API?)", EXIT_ERROR)


@contextlib.contextmanager
def _shaped(base: str, what: str) -> Iterator[None]:
    """Around output built whole from an answer before anything is printed: an answer that is not
    ``what`` (a missing key, a wrong type) is one error line, never half a table and a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _unexpected(base, what) from None


class ApiClient:
    def __init__(self, base_url: str, token: str = "", timeout_s: float = HTTP_TIMEOUT_S) -> None:
        try:
            # no credentials (they would be printed with every error naming the URL), no control characters
            base_url = config.api_url(base_url, field="--url")
            token = config.bearer_token(token, field="--token")
        except errors.ConfigError as exc:
            raise ClientError(str(exc), EXIT_USAGE) from None
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None, *, timeout_s: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            what = "connection refused" if isinstance(reason, ConnectionRefusedError) else str(reason)
            raise ClientError(
                f"cannot reach the API at {self.base}: {what} (is `autopilot api` or `autopilot up` running?)",
                EXIT_ERROR,
            ) from None
        except (TimeoutError, OSError) as exc:
            raise ClientError(f"the API at {self.base} did not answer: {exc}", EXIT_ERROR) from None
        except http.client.HTTPException as exc:  # a status line or headers that are not HTTP
            raise ClientError(f"the API at {self.base} did not speak HTTP: {type(exc).__name__}", EXIT_ERROR) from None
        except ValueError:
            raise ClientError(f"the API at {self.base} sent something that is not JSON", EXIT_ERROR) from None


def _http_error(exc: urllib.error.HTTPError) -> ClientError:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    detail = str(body.get("detail") or exc.reason)
    field = body.get("field")
    message = f"{field}: {detail}" if field else detail
    if exc.code == 401:
        return ClientError(f"unauthorized: {message} (set --token or AUTOPILOT_API_TOKEN)", EXIT_USAGE)
    if exc.code == 400:
        return ClientError(f"rejected: {message}", EXIT_USAGE)
    if exc.code == 404 and body.get("error") == "no_nodes":
        return ClientError(f"no nodes: {message}", EXIT_ERROR)
    return ClientError(f"API answered {exc.code}: {message}", EXIT_ERROR)


# ------------------------------------------------------------------ autopilot status


def status_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autopilot status", description="Ask the Autopilot API for a cluster status.")
    p.add_argument("--check", action="append", default=[], help="check(s) to run (repeatable, comma lists)")
    p.add_argument("--host", action="append", default=[], help="node(s) to run on (repeatable, comma lists)")
    p.add_argument("--nodelabel", help="select nodes labeled key=value")
    p.add_argument("--job", help="select the nodes running namespace:key=value")
    p.add_argument("--param", action="append", default=[], help="NAME=VALUE or CHECK.NAME=VALUE (repeatable)")
    p.add_argument("--deadline", type=float, help="seconds each node has to answer")
    p.add_argument("--batch", type=int, help="nodes in flight at once")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    _api_arguments(p)
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    return p


def _items(values: Sequence[str]) -> list[str]:
    """Comma-separated option values, entries stripped but kept even when empty: the API answers
    ``--host ,,,`` with a 400 naming the field, where dropping them would ask for every node."""
    return [item.strip() for value in values for item in value.split(",")]


def build_params(pairs: Sequence[str], checks: Sequence[str], catalogue: Mapping[str, Any] | None) -> dict[str, Any]:
    """``CHECK.NAME=VALUE`` goes to that check; a bare ``NAME=VALUE`` to every selected check that
    takes it (the API's catalogue says which; with no --check, its default checks)."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"--param {pair!r}: expected NAME=VALUE or CHECK.NAME=VALUE", EXIT_USAGE)
        target, dot, name = key.rpartition(".")
        if dot:
            out.setdefault(target, {})[name] = value
            continue
        assert catalogue is not None
        selected = list(checks) or list(catalogue.get("default", []))
        takers = [
            spec["name"]
            for spec in catalogue.get("checks", [])
            if spec["name"] in selected and any(p["name"] == key for p in spec.get("params", []))
        ]
        if not takers:
            raise ClientError(f"--param {pair!r}: none of {', '.join(selected)} takes a parameter {key!r}", EXIT_USAGE)
        for check in takers:
            out.setdefault(check, {})[key] = value
    return out


def status_main(argv: Sequence[str]) -> int:
    args = status_parser().parse_args(list(argv))
    err = Console(file=sys.stderr, highlight=False)
    try:
        client = _client(args.url, args.token)
        checks = _items(args.check)
        catalogue = None
        if any("." not in pair.partition("=")[0] for pair in args.param):
            catalogue = client.call("GET", "/api/v1/checks")
        body: dict[str, Any] = {"checks": checks, "hosts": _items(args.host)}
        params = build_params(args.param, checks, catalogue)
        if params:
            body["params"] = params
            # a parameter's check is part of the run even when --check did not name it
            if checks:
                body["checks"] = list(dict.fromkeys([*checks, *params]))
        for key in ("nodelabel", "job"):
            if getattr(args, key) is not None and not getattr(args, key).strip():
                # the API reads a blank selector as none at all: `--nodelabel "$UNSET"` would run everywhere
                raise ClientError(f"--{key} is empty (leave it out to select every node)", EXIT_USAGE)
        if args.deadline is not None and not math.isfinite(args.deadline):
            # JSON has no NaN or Infinity: sent, the API could only say the body is not JSON
            raise ClientError(f"--deadline: expected a number of seconds, got {args.deadline}", EXIT_USAGE)
        for key in ("nodelabel", "job", "deadline", "batch"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        created = client.call("POST", "/api/v1/runs", body)
        report = _follow(client, created, err, show=args.progress if args.progress is not None else err.is_terminal)
        shown = json.dumps(report, indent=2) if args.json else _report_text(report, client.base)
    except ClientError as exc:
        print(f"autopilot status: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(shown)
    else:
        _stdout().print(*shown, sep="\n")
    return report_exit_code(report)


def _report_text(report: Mapping[str, Any], base: str) -> list[Any]:
    """The table and the lines under it, built whole before anything is printed (``_shaped``)."""
    with _shaped(base, "a report"):
        shown: list[Any] = [report_table(report), Text(totals_line(report))]
        if report.get("network"):  # who the network checks' pairs point at (ping, the iperf ring)
            # The CLI client assembles its own process: the shipped checks name the tags.
            lines = text.network_lines(report["network"], registry.shipped())
            shown.append(Text(printable("\n".join(lines))))
    return shown


def _client(url: str | None, token: str | None) -> ApiClient:
    return ApiClient(url or DEFAULT_URL, token if token is not None else config.Settings.one(os.environ, "api_token"))


def _follow(client: ApiClient, created: Mapping[str, Any], err: Console, *, show: bool) -> dict[str, Any]:
    """Long-poll the run until it is complete, updating the progress bar."""
    answer: Mapping[str, Any] = created if isinstance(created, dict) else {}
    status_url, nodes, deadline_s = answer.get("status_url"), answer.get("nodes", []), answer.get("deadline_s", 3600)
    if (
        not isinstance(status_url, str)
        or not _RUN_PATH.fullmatch(status_url)
        or not isinstance(nodes, list)
        or isinstance(deadline_s, bool)
        or not isinstance(deadline_s, int | float)
        or not math.isfinite(deadline_s)
    ):
        raise _unexpected(client.base, "a new run")
    url = f"{status_url}?wait={POLL_WAIT_S}"
    total = len(nodes)
    give_up = time.monotonic() + float(deadline_s) + GRACE_S
    with Progress(
        TextColumn("[bold]nodes answered"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not show,
    ) as progress:
        task = progress.add_task("gather", total=total)
        while True:
            report: dict[str, Any] = client.call("GET", url, timeout_s=POLL_WAIT_S + HTTP_TIMEOUT_S)
            totals = report.get("totals") if isinstance(report, dict) else None
            answered = totals.get("answered") if isinstance(totals, dict) else None
            if isinstance(answered, bool) or not isinstance(answered, int):
                raise _unexpected(client.base, "a run report")
            progress.update(task, completed=answered)
            if report.get("complete"):
                return report
            if time.monotonic() > give_up:
                raise ClientError(f"run {created['id']} did not complete in time", EXIT_ERROR)


def report_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for node, entry in report["nodes"].items():
        if not entry["results"]:
            rows.append((node, "-", entry["status"], entry.get("detail", "")))
        for r in entry["results"]:
            status = r["status"] + (" (fatal)" if r.get("fatal") else "")
            rows.append((node, r["check"], status, " ".join(str(r.get("summary", "")).split())))
    return rows


_VERDICT_COLOURS = {"PASS": "green", "WARN": "yellow", "EVICT": "bold red", "TESTING": "cyan", "UNKNOWN": "dim"}


def _verdict_cell(entry: Any) -> str:
    """A node's verdict as the run's answer gives it (after the run's own results), ``-`` when it has none."""
    verdict = entry.get("verdict") if isinstance(entry, Mapping) else None
    if not isinstance(verdict, str) or not verdict:
        return "-"
    return f"[{_VERDICT_COLOURS.get(verdict, 'default')}]{_cell(verdict)}[/]"


def report_table(report: Mapping[str, Any]) -> Table:
    table = Table(title=f"run {_cell(report['id'])}", title_justify="left")
    for column in ("NODE", "VERDICT", "CHECK", "STATUS", "SUMMARY"):
        table.add_column(column, overflow="fold")
    named: set[str] = set()
    for node, check, status, summary in report_rows(report):
        style = _STYLE.get(status.split(" ")[0], "")
        shown = f"[{style}]{_cell(status)}[/]" if style else _cell(status)
        # The verdict on the node's first row only: it is the node's, not each check's.
        verdict = "" if node in named else _verdict_cell(report["nodes"].get(node))
        named.add(node)
        table.add_row(_cell(node), verdict, _cell(check), shown, _cell(summary))
    return table


def totals_line(report: Mapping[str, Any]) -> str:
    totals = report["totals"]
    parts = [
        f"{totals[s]} {s}"
        for s in ("ok", "skipped", "busy", "warn", "fail", "error", "unreachable", "unknown")
        if totals.get(s)
    ]
    return f"{totals['nodes']} node(s): {', '.join(parts) or 'none'}; {report['runtime_s']:.2f} s"


def report_exit_code(report: Mapping[str, Any]) -> int:
    """0 all ok; 1 a warn or fail (a finding beats an inability to look); 3 an error, a silent node,
    or checks that never started because the GPUs were busy (nothing was looked at there)."""
    totals = report["totals"]
    if totals.get("warn") or totals.get("fail"):
        return EXIT_BAD
    if any(totals.get(s) for s in ("error", "unreachable", "unknown", "pending", "busy")):
        return EXIT_ERROR
    return EXIT_OK


# ------------------------------------------------------------------ autopilot nodes


def _api_arguments(p: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token``, whose defaults come from the environment as the help says."""
    p.add_argument(
        "--url",
        default=config.Settings.one(os.environ, "api_url") or None,
        help=f"API URL (default AUTOPILOT_API_URL, then {DEFAULT_URL})",
    )
    p.add_argument("--token", default=None, help="bearer token (default AUTOPILOT_API_TOKEN)")


def nodes_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autopilot nodes", description="List the nodes the Autopilot API knows.")
    p.add_argument("--json", action="store_true", help="print the JSON answer")
    p.add_argument("--gpus", action="store_true", help="one row per GPU: its verdict, since when and why")
    _api_arguments(p)
    return p


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _live_cell(node: Mapping[str, Any], now: float) -> str:
    """The LIVE column: ``yes``, ``no``, or how long the node's worker has been wedged (every thread stuck)."""
    wedged = node.get("wedged_since")
    if isinstance(wedged, (int, float)) and not isinstance(wedged, bool) and wedged > 0:
        # Stamped on the worker's clock, as last_seen: its offset taken off, as for the LAST SEEN column.
        return f"[magenta]no: wedged {_age(max(0.0, now - _off_worker_clock(node, float(wedged))))}[/]"
    return "yes" if node.get("live") else "[magenta]no[/]"


def _shared_seen(node: Mapping[str, Any]) -> float:
    """The node's last heartbeat with its worker's clock offset taken off (as the reconciles read it)."""
    return _off_worker_clock(node, float(node.get("last_seen") or 0))


def _off_worker_clock(node: Mapping[str, Any], stamp: float) -> float:
    """``stamp`` (epoch s on the node's worker's clock) with that clock's offset to the store's taken off."""
    offset = node.get("clock_offset")
    if isinstance(offset, (int, float)) and not isinstance(offset, bool) and math.isfinite(offset):
        return stamp - float(offset)
    return stamp


def _clock_cell(offset: object) -> str:
    """The CLOCK column: the node's worker's clock offset to the store's (``+2h ahead``, ``-40s behind``), ``?``
    while not measured. It is taken off the node's stamps; the reasons name one past AUTOPILOT_CLOCK_SKEW_WARN."""
    if not isinstance(offset, (int, float)) or isinstance(offset, bool) or not math.isfinite(offset):
        return "?"
    size = _age(abs(float(offset))).removesuffix(" ago")
    return f"+{size} ahead" if offset > 0 else f"-{size} behind" if offset < 0 else "0s"


def nodes_table(answer: Mapping[str, Any], now: float) -> Table:
    table = Table(title=f"{_cell(answer['total'])} node(s), {_cell(answer['live'])} live", title_justify="left")
    for column in ("NODE", "VERDICT", "LIVE", "LAST SEEN", "CLOCK", "GPUS", "REASONS"):
        table.add_column(column, overflow="fold")
    colours = _VERDICT_COLOURS
    for n in answer["nodes"]:
        verdict = n.get("verdict") or "UNKNOWN"
        gpus = f"{n.get('gpu_count', 0)} x {n['gpu_model']}" if n.get("gpu_model") else str(n.get("gpu_count", 0))
        table.add_row(
            _cell(n["name"]),
            f"[{colours.get(verdict, 'default')}]{_cell(verdict)}[/]",
            _live_cell(n, now),
            _age(max(0.0, now - _shared_seen(n))) if n.get("last_seen") else "never",
            _clock_cell(n.get("clock_offset")),
            _cell(gpus),
            _cell("; ".join(n.get("reasons") or [])),
        )
    return table


def gpus_table(answer: Mapping[str, Any]) -> Table:
    """``autopilot nodes --gpus``: a row per GPU of every node, worst-first within a node by index; MEASURED is
    when each figure check (``pciebw``, ``gpumem``) last measured it, ``never`` while it has not."""
    count = sum(len(n.get("gpus") or ()) for n in answer["nodes"])
    table = Table(title=f"{count} GPU(s) on {_cell(answer['total'])} node(s)", title_justify="left")
    for column in ("NODE", "GPU", "UUID", "BUS ID", "VERDICT", "SINCE", "MEASURED", "REASONS"):
        table.add_column(column, overflow="fold")
    colours = {"PASS": "green", "WARN": "yellow", "EVICT": "bold red", "UNKNOWN": "dim"}
    for n in answer["nodes"]:
        for g in n.get("gpus") or ():
            verdict = str(g.get("verdict") or "UNKNOWN")
            table.add_row(
                _cell(n["name"]),
                _cell(str(g.get("index") or "?")),
                _cell(str(g.get("uuid") or "")),
                _cell(str(g.get("bus_id") or "")),
                f"[{colours.get(verdict, 'default')}]{_cell(verdict)}[/]",
                _cell(str(g.get("since") or "")),
                _cell(_measured(g)),
                _cell("; ".join(g.get("reasons") or [])),
            )
    return table


def _measured(gpu: Mapping[str, Any]) -> str:
    """``pciebw 2026-11-30T21:00:00Z, gpumem never`` from a GPU's ``measured`` and ``unmeasured_since``."""
    measured, unmeasured = gpu.get("measured"), gpu.get("unmeasured_since")
    said = dict.fromkeys(unmeasured, "never") if isinstance(unmeasured, Mapping) else {}
    if isinstance(measured, Mapping):
        said.update({str(c): str(at) for c, at in measured.items()})
    return ", ".join(f"{c} {at}" for c, at in sorted(said.items()))


def _answered_at(answer: Mapping[str, Any]) -> float:
    """The store's clock when the API judged ``answer`` (its ``now``; this host's clock from an older API): the
    ages shown count from it, so a laptop whose clock is off shows them as the reconciles see them."""
    now = answer.get("now")
    if isinstance(now, (int, float)) and not isinstance(now, bool) and math.isfinite(now):
        return float(now)
    return time.time()


def _stdout() -> Console:
    """Tables on stdout: as wide as the terminal, or 160 columns into a pipe or a file."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def nodes_main(argv: Sequence[str]) -> int:
    args = nodes_parser().parse_args(list(argv))
    try:
        client = _client(args.url, args.token)
        answer = client.call("GET", "/api/v1/nodes?gpus=true" if args.gpus else "/api/v1/nodes")
        if not isinstance(answer, dict) or not isinstance(answer.get("nodes"), list):
            raise _unexpected(client.base, "a node list")
        with _shaped(client.base, "a node list"):
            shown: Any = (
                json.dumps(answer, indent=2)
                if args.json
                else gpus_table(answer) if args.gpus else nodes_table(answer, _answered_at(answer))
            )
    except ClientError as exc:
        print(f"autopilot nodes: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(shown)
    else:
        _stdout().print(shown)
    return EXIT_OK

"""The ``autopilot`` command line.

Core commands run here (``checks``, ``run``, ``evaluate``); the runtime commands (``up``,
``worker``, ``beat``, ``api``, ``status``, ``nodes``, ``flower``, ``probe``) live in the adapter packages and
are resolved by name at run time, so the core has no static dependency on Celery or Flask.

Exit codes: 0 no check failed; 1 a check reported warn or fail; 2 usage or configuration error;
3 a check could not run (error). Errors are one line on stderr, never a traceback.

argparse, not click: click reaches us only through Flask and Celery, so the core would gain a
dependency it does not declare, and the one workaround click would remove is ``_split_runtime``
(ten lines: each runtime command parses its own arguments, which click's pass-through would also
leave to it). Our exit codes and one-line errors would need the same wrapping under click.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autopilot import config, errors, execution, parsing, registry, render
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status

EXIT_OK, EXIT_BAD, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
MAX_SAVED_OUTPUT = 64 << 20  # bytes; the largest dcgmi -j or nvidia-smi -q output is well under 1 MiB
EVENTS = "events"  # ``evaluate events FILE``: the follower's check, judged from a saved kernel log

# name -> "module:function" taking (argv) and returning an exit code; imported only when used.
RUNTIME_COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("workers.up:main", "start the whole stack on this machine (embedded Redis, API, worker, beat)"),
    "worker": ("workers.main:worker_main", "run this node's Celery worker"),
    "beat": ("workers.main:beat_main", "run celery beat (periodic checks, reconciliation)"),
    "flower": ("workers.main:flower_main", "run Flower against the broker"),
    "probe": ("workers.probe:main", "liveness probe of a worker or beat: the age of its heartbeat file"),
    "api": ("api.main:main", "serve the HTTP API"),
    "status": ("api.client:status_main", "ask the API for a cluster status"),
    "nodes": ("api.client:nodes_main", "list the nodes the API knows"),
    "inject": ("workers.follower:inject_main", "inject a GPU event (Xid) into a simulated node's follower"),
}


class UsageError(Exception):
    """Bad command line; exit 2 with this message."""


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 all ok/skipped; 1 any warn or fail (a finding beats an inability to look); 3 any error."""
    statuses = {r.status for r in results}
    if statuses & {Status.WARN, Status.FAIL}:
        return EXIT_BAD
    if Status.ERROR in statuses:
        return EXIT_ERROR
    return EXIT_OK


def parse_params(pairs: Sequence[str], checks: Sequence[str], reg: registry.CheckRegistry) -> dict[str, dict[str, str]]:
    """``--param r=3`` (for every selected check that has ``r``) or ``--param dcgm.r=3``."""
    out: dict[str, dict[str, str]] = {c: {} for c in checks}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {pair!r}: expected NAME=VALUE or CHECK.NAME=VALUE")
        target, dot, name = key.rpartition(".")
        if dot:
            if target not in out:
                raise UsageError(f"--param {pair!r}: {target!r} is not among the checks being run")
            out[target][name] = value
            continue
        takers = [c for c in checks if any(p.name == key for p in reg.get(c).params)]
        if not takers:
            raise UsageError(f"--param {pair!r}: none of {', '.join(checks)} takes a parameter {key!r}")
        for c in takers:
            out[c][key] = value
    for c, raw in out.items():
        reg.get(c).validate(raw)  # BadParameter -> usage error before anything runs
    return out


def read_saved_bytes(path: str) -> str | bytes:
    """The file's content as read (``-`` is stdin; a test's stdin may give text).

    At most ``MAX_SAVED_OUTPUT`` bytes are read: ``evaluate dcgm /dev/zero`` read until memory ran out."""
    if path == "-":
        data: str | bytes = getattr(sys.stdin, "buffer", sys.stdin).read(MAX_SAVED_OUTPUT + 1)
    else:
        with Path(path).open("rb") as file:
            data = file.read(MAX_SAVED_OUTPUT + 1)
    if len(data) > MAX_SAVED_OUTPUT:
        raise UsageError(f"{path}: more than {MAX_SAVED_OUTPUT >> 20} MiB, not a saved tool output")
    return data


def read_saved_output(path: str) -> str:
    """The file's text (``-`` is stdin) without leading ``#`` comment lines such as a ``# source:`` header."""
    data = read_saved_bytes(path)
    text = data.removeprefix("\ufeff") if isinstance(data, str) else _decoded(data)
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def _decoded(data: bytes) -> str:
    """A saved file's text: UTF-8 without a byte-order mark (Notepad writes one), or UTF-16 where the
    file starts with its mark (Windows PowerShell 5's ``nvidia-smi -q > out.txt``). The mark is no
    part of the tool's answer, and before it a report's first line was unreadable."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def _load_checks() -> registry.CheckRegistry:
    return registry.shipped()  # the CLI assembles its process: the built-in checks


def cmd_checks(args: argparse.Namespace, settings: config.Settings) -> int:
    reg = _load_checks()
    if args.json:
        print(json.dumps([spec.describe() for spec in reg], indent=2))
    else:
        render.console().print(render.catalog_table(reg))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: config.Settings) -> int:
    reg = _load_checks()
    names = _check_names(args.checks, reg)
    params = parse_params(args.param, names, reg)
    ctx = CheckContext.default(settings, reg)
    results: list[CheckResult] = []
    con = render.console(sys.stderr)
    show_progress = sys.stderr.isatty() and not args.json
    for i, name in enumerate(names, 1):
        if show_progress:
            with con.status(f"[{i}/{len(names)}] running {name} ..."):
                results.append(execution.run_check(name, ctx, params[name], checks=reg))
        else:
            results.append(execution.run_check(name, ctx, params[name], checks=reg))
    _print_results(results, as_json=args.json, node=ctx.node, verbose=args.verbose)
    return exit_code(results)


def cmd_evaluate(args: argparse.Namespace, settings: config.Settings) -> int:
    if args.check == EVENTS:
        return _evaluate_events(args, settings)
    reg = _load_checks()
    spec = reg.get(args.check)
    if spec.evaluate_text is None:
        raise UsageError(f"check {spec.name} has no saved-output form to evaluate")
    params = parse_params(args.param, [spec.name], reg)[spec.name]
    try:
        text = read_saved_output(args.file)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    result = _evaluate(spec, text, spec.validate(params), settings)
    _print_results([result], as_json=args.json, node="", verbose=True)
    return exit_code([result])


def _evaluate_events(args: argparse.Namespace, settings: config.Settings) -> int:
    """``evaluate events FILE``: a saved kernel log judged as the follower would (``events`` is no registered
    check: the follower writes it, nothing runs it)."""
    from autopilot.events import savedlog  # the follower's modules, loaded only for this

    if args.param:
        raise UsageError(f"{EVENTS} takes no --param (its storm window is AUTOPILOT_EVENTS_STORM_WINDOW)")
    try:
        data = read_saved_bytes(args.file)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    name = "stdin" if args.file == "-" else args.file
    result = savedlog.judge(data, storm_window_s=settings.events_storm_window_s, name=name)
    _print_results([result], as_json=args.json, node="", verbose=True)
    return exit_code([result])


def _evaluate(spec: registry.CheckSpec, text: str, params: Mapping[str, Any], settings: config.Settings) -> CheckResult:
    assert spec.evaluate_text is not None
    try:
        result = spec.evaluate_text(text, params, settings)
    except errors.AutopilotError as exc:
        return CheckResult(spec.name, Status.ERROR, f"{type(exc).__name__}: {exc}", params=dict(params))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return CheckResult(
            spec.name, Status.ERROR, f"unreadable output: {type(exc).__name__}: {exc}", params=dict(params)
        )
    return dataclasses.replace(result, check=spec.name, params=dict(params))


def _check_names(requested: Sequence[str], reg: registry.CheckRegistry) -> list[str]:
    names: list[str] = []
    for item in requested or []:
        try:
            names.extend(parsing.parse_entries(item, field="checks"))
        except errors.BadParameter:  # dropped, `run ,,,` would run every check
            raise UsageError(f"empty check name in {item[:64]!r}") from None
    if not names:
        # Every check except the invasive ones; those that do not apply here say `skipped` and why.
        names = [s.name for s in reg if not s.invasive]
    for n in names:
        reg.get(n)
    return list(dict.fromkeys(names))


def _print_results(results: Sequence[CheckResult], *, as_json: bool, node: str, verbose: bool) -> None:
    if as_json:
        print(json.dumps({"node": node, "results": [r.to_dict() for r in results]}, indent=2))
        return
    con = render.console()
    con.print(render.results_table(results, title=f"node {node}" if node else None))
    if verbose:
        for r in results:
            if r.devices:
                con.print(render.devices_table(r))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autopilot", description="GPU cluster health checks.")
    parser.add_argument("--log-level", default=None, help=argparse.SUPPRESS)  # default: Settings.log_level
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("checks", help="list the checks, their parameters and defaults")
    p.add_argument("--json", action="store_true", help="structured output")
    p.set_defaults(func=cmd_checks)

    p = sub.add_parser("run", help="run checks on this machine (no broker needed)")
    p.add_argument("checks", nargs="*", metavar="CHECK", help="checks to run (default: every non-invasive check)")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="check parameter, e.g. r=2 or dcgm.r=2")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="also print per-device tables")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "evaluate",
        help="judge a saved tool output (nvidia-smi, dcgmi, bandwidthTest, our programs) or kernel log (events)",
        description="Judge a saved tool output as CHECK would, or, with CHECK events, a saved kernel log (dmesg, "
        "journalctl -k in any -o, kern.log/syslog, /dev/kmsg, a container's log of one) as the events follower would.",
    )
    p.add_argument("check", metavar="CHECK", help="a check with a saved-output form, or events for a kernel log")
    p.add_argument("file", metavar="FILE", help="the saved output; - reads stdin")
    p.add_argument("--param", action="append", default=[], metavar="K=V")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_evaluate)

    for name, (_, help_text) in RUNTIME_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=None, runtime=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    runtime = _split_runtime(args_list)
    try:
        args = parser.parse_args(args_list if runtime is None else runtime[0])
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    try:
        level = args.log_level or config.Settings.one(os.environ, "log_level")
        _setup_logging(config.log_level(level, "--log-level") if args.log_level else level)
    except errors.ConfigError as exc:
        print(f"autopilot: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.func is None:
            return _run_runtime(args.runtime, args.rest if runtime is None else runtime[1])
        settings = config.Settings.from_env(os.environ)
        code: int = args.func(args, settings)
        return code
    except (UsageError, errors.ConfigError) as exc:
        print(f"autopilot: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except errors.AutopilotError as exc:
        print(f"autopilot: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("autopilot: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _split_runtime(args_list: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(arguments for our parser, arguments for the runtime command) when one is named.

    argparse's REMAINDER loses a subcommand's leading options (``worker --node x``), so a runtime
    command's own arguments are cut off before parsing and handed to it whole.
    """
    i = 0
    while i < len(args_list) and args_list[i].startswith("--log-level"):
        i += 1 if "=" in args_list[i] else 2
    if i < len(args_list) and args_list[i] in RUNTIME_COMMANDS:
        return list(args_list[: i + 1]), list(args_list[i + 1 :])
    return None


def _run_runtime(name: str, rest: Sequence[str]) -> int:
    target, _ = RUNTIME_COMMANDS[name]
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise errors.AutopilotError(f"'{name}' is not available: {exc}") from exc
    func: Callable[[Sequence[str]], int] = getattr(module, func_name)
    return func(list(rest))


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

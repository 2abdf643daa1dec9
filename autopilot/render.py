"""Human output: result tables and one-line errors, with rich. JSON output needs no help."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import IO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autopilot.registry import CheckSpec
from autopilot.results import CheckResult, Status, printable

_STYLE = {
    Status.OK: "green",
    Status.WARN: "yellow",
    Status.FAIL: "bold red",
    Status.ERROR: "magenta",
    Status.SKIPPED: "dim",
    Status.BUSY: "dim",
}


def console(file: IO[str] | None = None) -> Console:
    # Wide enough that summaries are not folded into unreadable columns when piped.
    return Console(file=file, width=None if file is None else 160, soft_wrap=False)


def cell(value: object) -> str:
    """A table cell of a tool's, a result's or an answer's words: rich reads ``[...]`` as markup (``[/x]``
    in a dcgmi line crashed the table) and passes control characters to the terminal: both written out."""
    return escape(printable(str(value)))


def results_table(results: Sequence[CheckResult], *, title: str | None = None, show_node: bool = False) -> Table:
    table = Table(title=title, title_justify="left")
    if show_node:
        table.add_column("NODE")
    table.add_column("CHECK")
    table.add_column("STATUS")
    table.add_column("SUMMARY", overflow="fold")
    table.add_column("TIME", justify="right")
    for r in results:
        status = r.status.value.upper() + (" (fatal)" if r.fatal else "")
        row = [cell(r.check), f"[{_STYLE[r.status]}]{status}[/]", cell(r.summary), f"{r.duration_s:.1f}s"]
        table.add_row(*([cell(r.node)] if show_node else []), *row)
    return table


def devices_table(result: CheckResult) -> Table:
    table = Table(title=f"{result.check}: devices", title_justify="left")
    for col in ("DEVICE", "STATUS", "VALUE", "DETAIL"):
        table.add_column(col)
    for d in result.devices:
        value = "" if d.value is None else f"{d.value}{' ' + d.unit if d.unit else ''}"
        table.add_row(cell(d.id), f"[{_STYLE[d.status]}]{d.status.value}[/]", cell(value), cell(d.detail))
    return table


def catalog_table(specs: Iterable[CheckSpec]) -> Table:
    table = Table(title="checks", title_justify="left")
    for col in ("NAME", "DESCRIPTION", "PARAMETERS (default)", "TIMEOUT"):
        table.add_column(col, overflow="fold")
    for spec in specs:
        params = ", ".join(f"{p.name}={p.default if p.default is not None else '<setting>'}" for p in spec.params)
        table.add_row(spec.name, spec.description, params or "-", f"{spec.timeout_s:g}s")
    return table

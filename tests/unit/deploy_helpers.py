"""Helpers of the deployment-file tests: paths, PromQL metric names, and a reader of the chart's templates."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import posixpath
import re
import secrets
import shutil
import string
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT, require_binary

CHART = ROOT / "helm" / "autopilot"
RULES = ROOT / "alerts" / "autopilot-rules.yaml"
DASHBOARD = ROOT / "grafana" / "autopilot-dashboard.json"

# PromQL words that look like metric names but are not.
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels and numbers left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable (label_values(metric, label))."""
    dash = dashboard()
    out: list[tuple[str, str]] = []
    for panel in _walk_panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((f"panel {panel.get('title')!r}", target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        found = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
        out.append((f"variable {var['name']!r}", found.group(1) if found else query))
    return out


def grafana_placeholders(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, so Prometheus can run it."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace('"$node"', '".*"')
        .replace('"$check"', '".*"')
    )


def tool(name: str) -> str:
    """A tool installed in the project venv (next to this Python) or on PATH; skip/fail as require_binary."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    return found if found else require_binary(name)


# ------------------------------------------------------------------ the chart's template reader
#
# No helm binary here, so the chart is rendered by a small reader of Go's text/template with the
# Sprig and Helm functions the templates use. It raises on anything it does not know (a new
# function, a nil field chain) rather than rendering something Helm would not.


class TemplateError(Exception):
    """A template this reader cannot render, or one Helm would also refuse (``required``, ``fail``)."""


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)(?![\w.])|
    (?P<decl>:=)|(?P<assign>=)|(?P<op>[()|,])|
    (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)|(?P<field>(?:\.[A-Za-z0-9_]+)+|\.)|
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
    )""",
    re.X | re.S,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise TemplateError(f"cannot read {text[pos : pos + 40]!r} in {{{{ {text} }}}}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "field" and text[pos - 1 : pos] == ")" and match.group(0) == value != ".":
            kind = "chain"  # (pipeline).Field, with no space: a field of the pipeline's value
        out.append((kind, value))
        pos = match.end()
    return out


class _Pipe:
    """``$a, $b := cmd | cmd``: declared variables, whether it is a declaration, and commands."""

    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.vars: list[str] = []
        self.declare = True
        for i, (kind, _) in enumerate(toks):
            if kind in ("decl", "assign"):
                self.vars = [v for k, v in toks[:i] if k == "var"]
                self.declare = kind == "decl"
                toks = toks[i + 1 :]
                break
        self.cmds: list[list[Any]] = []
        self._toks, self._pos = toks, 0
        self.cmds = self._commands(end=None)

    def _commands(self, end: str | None) -> list[list[Any]]:
        cmds: list[list[Any]] = [[]]
        while self._pos < len(self._toks):
            kind, text = self._toks[self._pos]
            self._pos += 1
            if kind == "op" and text == end:
                return cmds
            if kind == "op" and text == "|":
                cmds.append([])
            elif kind == "op" and text == "(":
                sub = self._commands(end=")")
                chain: list[str] = []
                if self._pos < len(self._toks) and self._toks[self._pos][0] == "chain":
                    chain = self._toks[self._pos][1].strip(".").split(".")
                    self._pos += 1
                cmds[-1].append(("sub", sub, chain))
            else:
                cmds[-1].append((kind, text))
        if end:
            raise TemplateError("unbalanced parentheses")
        return cmds


class _Node:
    def __init__(self, kind: str, pipe: _Pipe | None = None, text: str = "") -> None:
        self.kind, self.pipe, self.text = kind, pipe, text
        self.body: list[_Node] = []
        self.orelse: list[_Node] = []


def _parse(source: str, defines: dict[str, list[_Node]]) -> list[_Node]:
    """The tree of one template file; ``define`` blocks go into ``defines``."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if match.group(1):
            text = text.rstrip()
        if pieces and pieces[-1][0] == "trimright":
            pieces.pop()
            text = text.lstrip()
        pieces.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            pieces.append(("action", body))
        if match.group(3):
            pieces.append(("trimright", ""))
        pos = match.end()
    tail = source[pos:]
    if pieces and pieces[-1][0] == "trimright":
        pieces.pop()
        tail = tail.lstrip()
    pieces.append(("text", tail))

    root = _Node("root")
    stack = [root]
    for kind, body in pieces:
        if kind == "trimright":
            continue
        top = stack[-1]
        target = top.orelse if getattr(top, "in_else", False) else top.body
        if kind == "text":
            if body:
                target.append(_Node("text", text=body))
            continue
        word, _, rest = body.partition(" ")
        if word in ("if", "range", "with"):
            node = _Node(word, _Pipe(_tokens(rest)))
            target.append(node)
            stack.append(node)
        elif word == "define":
            node = _Node("define", text=json.loads(rest.strip()))
            stack.append(node)
        elif word == "else":
            if rest.startswith("if "):
                # else if: a nested if in the else branch that the same {{ end }} closes.
                top.in_else = True  # type: ignore[attr-defined]
                node = _Node("if", _Pipe(_tokens(rest[3:])))
                node.chained = True  # type: ignore[attr-defined]
                top.orelse.append(node)
                stack.append(node)
            else:
                top.in_else = True  # type: ignore[attr-defined]
        elif word == "end":
            while True:
                done = stack.pop()
                if done.kind == "define":
                    defines[done.text] = done.body
                if not getattr(done, "chained", False):
                    break
        else:
            target.append(_Node("action", _Pipe(_tokens(body))))
    if len(stack) != 1:
        raise TemplateError("unterminated block")
    return root.body


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (list, dict, tuple)) and not value)


def _go_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        raise TemplateError(f"printing a {type(value).__name__} (Go would write map[...]): {value!r}")
    return str(value)


def _to_yaml(value: Any) -> str:
    text = str(yaml.safe_dump(value, default_flow_style=False, sort_keys=True, width=10_000))
    return text.rstrip("\n").removesuffix("\n...")


def _printf(fmt: str, *args: Any) -> str:
    return re.sub(r"%[sdv]", "%s", fmt) % tuple(_go_str(a) for a in args)


def _required(message: str, value: Any) -> Any:
    if not _truthy(value):
        raise TemplateError(message)
    return value


def _fail(message: str) -> Any:
    raise TemplateError(message)


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        value = value[key] if isinstance(value, list) else (value or {}).get(key)
    return value


def _indent(n: int, text: str) -> str:
    return "\n".join(" " * n + line for line in str(text).split("\n"))


def _sprig_set(mapping: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Sprig's ``set``: changes ``mapping`` in place and returns it."""
    mapping[key] = value
    return mapping


def _sprig_merge(dst: dict[str, Any], *srcs: dict[str, Any]) -> dict[str, Any]:
    """Sprig's ``merge`` (mergo without overwrite): keys ``dst`` lacks come from each source in turn,
    nested maps merged the same way; ``dst`` is changed in place and returned."""
    for src in srcs:
        for key, value in (src or {}).items():
            if isinstance(dst.get(key), dict) and isinstance(value, dict):
                _sprig_merge(dst[key], value)
            elif key not in dst or dst[key] is None:
                dst[key] = value
    return dst


_FUNCS: dict[str, Any] = {
    "list": lambda *a: list(a),
    "until": lambda n: list(range(n)),
    "dict": lambda *a: dict(zip(a[::2], a[1::2], strict=True)),
    "append": lambda lst, v: [*lst, v],
    "deepCopy": copy.deepcopy,
    "set": _sprig_set,
    "merge": _sprig_merge,
    "quote": lambda *a: " ".join(json.dumps(_go_str(v)) for v in a if v is not None),
    "squote": lambda *a: " ".join(f"'{_go_str(v)}'" for v in a if v is not None),
    "toString": _go_str,
    "toJson": lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")),
    "toYaml": _to_yaml,
    "fromYaml": lambda s: yaml.safe_load(s) or {},
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "indent": _indent,
    "default": lambda d, v=None: v if _truthy(v) else d,
    "printf": _printf,
    "print": lambda *a: "".join(_go_str(v) for v in a),
    "trunc": lambda n, s: s[:n],
    "trimSuffix": lambda suf, s: s.removesuffix(suf),
    "trimPrefix": lambda pre, s: s.removeprefix(pre),
    "contains": lambda sub, s: sub in s,
    "hasPrefix": lambda pre, s: s.startswith(pre),
    "replace": lambda old, new, s: s.replace(old, new),
    "join": lambda sep, lst: sep.join(_go_str(v) for v in lst),
    "index": _index,
    "hasKey": lambda m, k: k in m,
    "dir": lambda p: posixpath.dirname(p) or ".",
    "base": posixpath.basename,
    "b64enc": lambda s: base64.b64encode(_go_str(s).encode()).decode(),
    "b64dec": lambda s: base64.b64decode(s).decode(),
    "sha256sum": lambda s: hashlib.sha256(_go_str(s).encode()).hexdigest(),
    "randAlphaNum": lambda n: "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n)),
    "required": _required,
    "fail": _fail,
    # `helm template` and a first install see no cluster: lookup answers an empty map.
    "lookup": lambda *a: {},
    "not": lambda v: not _truthy(v),
    "empty": lambda v: not _truthy(v),
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "len": len,
    "int": int,
    "ternary": lambda a, b, cond: a if _truthy(cond) else b,
    "kindIs": lambda kind, v: {"map": dict, "slice": list, "string": str, "bool": bool}[kind] is type(v),
}


class _Files:
    def __init__(self, root: Path) -> None:
        self._root = root

    def Get(self, name: str) -> str:  # noqa: N802 (Helm's name)
        path = self._root / name
        return path.read_text() if path.is_file() else ""


class _ApiVersions:
    def __init__(self, available: Iterable[str]) -> None:
        self._available = set(available)

    def Has(self, name: str) -> bool:  # noqa: N802 (Helm's name)
        return name in self._available


class _Renderer:
    def __init__(self, defines: dict[str, list[_Node]], root: dict[str, Any]) -> None:
        self.defines, self.root = defines, root

    def render(self, nodes: list[_Node], dot: Any, scope: list[dict[str, Any]]) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                assert node.pipe is not None
                value = self.pipe(node.pipe, dot, scope)
                if not node.pipe.vars:
                    out.append(_go_str(value))
            elif node.kind in ("if", "with"):
                assert node.pipe is not None
                inner = [*scope, {}]
                value = self.pipe(node.pipe, dot, inner)
                if _truthy(value):
                    out.append(self.render(node.body, value if node.kind == "with" else dot, inner))
                else:
                    out.append(self.render(node.orelse, dot, [*scope, {}]))
            elif node.kind == "range":
                assert node.pipe is not None
                out.append(self.range(node, dot, scope))
        return "".join(out)

    def range(self, node: _Node, dot: Any, scope: list[dict[str, Any]]) -> str:
        assert node.pipe is not None
        names = node.pipe.vars
        node.pipe.vars = []
        try:
            value = self.pipe(node.pipe, dot, scope)
        finally:
            node.pipe.vars = names
        items = sorted(value.items()) if isinstance(value, dict) else list(enumerate(value or []))
        if not items:
            return self.render(node.orelse, dot, [*scope, {}])
        out = []
        for key, item in items:
            frame: dict[str, Any] = {}
            if len(names) == 1:
                frame[names[0]] = item
            elif len(names) == 2:
                frame[names[0]], frame[names[1]] = key, item
            out.append(self.render(node.body, item, [*scope, frame]))
        return "".join(out)

    def pipe(self, pipe: _Pipe, dot: Any, scope: list[dict[str, Any]]) -> Any:
        value: Any = None
        for i, cmd in enumerate(pipe.cmds):
            value = self.command(cmd, dot, scope, piped=(value,) if i else ())
        if pipe.vars:
            if pipe.declare:
                scope[-1][pipe.vars[0]] = value
            else:
                frame = next((f for f in reversed(scope) if pipe.vars[0] in f), None)
                if frame is None:
                    raise TemplateError(f"assignment to undeclared {pipe.vars[0]}")
                frame[pipe.vars[0]] = value
        return value

    def command(self, cmd: list[Any], dot: Any, scope: list[dict[str, Any]], piped: tuple[Any, ...]) -> Any:
        head, rest = cmd[0], cmd[1:]
        if head[0] == "ident" and head[1] in ("and", "or") and not piped:
            # Go (1.18+) stops at the first operand that decides: `and $x $x.field` is safe on a nil $x.
            value: Any = None
            for op in rest:
                value = self.operand(op, dot, scope)
                if _truthy(value) == (head[1] == "or"):
                    return value
            return value
        if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
            args = [self.operand(op, dot, scope) for op in rest] + list(piped)
            return self.call(head[1], args)
        value = self.operand(head, dot, scope)
        if callable(value):
            return value(*[self.operand(op, dot, scope) for op in rest], *piped)
        if rest or piped:
            raise TemplateError(f"{head[1]} is not a function")
        return value

    def call(self, name: str, args: list[Any]) -> Any:
        if name == "include":
            if args[0] not in self.defines:
                raise TemplateError(f"no template {args[0]!r}")
            return self.render(self.defines[args[0]], args[1], [{"$": args[1]}])
        if name == "and":
            return next((a for a in args if not _truthy(a)), args[-1])
        if name == "or":
            return next((a for a in args if _truthy(a)), args[-1])
        if name not in _FUNCS:
            raise TemplateError(f"this reader does not know the function {name!r}")
        return _FUNCS[name](*args)

    def operand(self, op: Any, dot: Any, scope: list[dict[str, Any]]) -> Any:
        kind = op[0]
        if kind == "str":
            return json.loads(op[1])
        if kind == "raw":
            return op[1][1:-1]
        if kind == "num":
            return float(op[1]) if "." in op[1] else int(op[1])
        if kind == "ident":
            if op[1] in ("true", "false", "nil"):
                return {"true": True, "false": False}.get(op[1])
            return self.call(op[1], [])
        if kind == "sub":
            value = None
            for i, cmd in enumerate(op[1]):
                value = self.command(cmd, dot, scope, piped=(value,) if i else ())
            return self._chain(value, op[2], "(...)")
        if kind == "field":
            return self._chain(dot, [] if op[1] == "." else op[1].strip(".").split("."), op[1])
        if kind == "var":
            name, *chain = op[1].split(".")
            if name == "$":
                base = scope[0]["$"]
            else:
                frame = next((f for f in reversed(scope) if name in f), None)
                if frame is None:
                    raise TemplateError(f"undefined variable {name}")
                base = frame[name]
            return self._chain(base, chain, op[1])
        raise TemplateError(f"unexpected {op[1]!r}")

    @staticmethod
    def _chain(value: Any, names: list[str], where: str) -> Any:
        for name in names:
            if value is None:
                raise TemplateError(f"nil pointer evaluating {where}")
            value = value.get(name) if isinstance(value, dict) else getattr(value, name)
        return value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def chart_values(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """values.yaml with ``overrides`` merged in as ``helm --set``/``-f`` would (maps deep-merged)."""
    return _merge(yaml.safe_load((CHART / "values.yaml").read_text()), overrides or {})


def render_chart(
    overrides: Mapping[str, Any] | None = None,
    *,
    release: str = "autopilot",
    namespace: str = "autopilot",
    api_versions: Iterable[str] = (),
) -> dict[str, str]:
    """Every template of the chart rendered as ``helm template`` would: {template name: text}."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    defines: dict[str, list[_Node]] = {}
    trees = {}
    for path in sorted((CHART / "templates").iterdir()):
        trees[path.name] = _parse(path.read_text(), defines)
    root = {
        "Values": chart_values(overrides),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": True},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
        "Template": {"BasePath": f"{chart['name']}/templates"},
        "Capabilities": {"APIVersions": _ApiVersions(api_versions)},
        "Files": _Files(CHART),
    }
    renderer = _Renderer(defines, root)
    # include "(print $.Template.BasePath "/configmap.yaml")" names a file: make each file includable.
    for name, tree in trees.items():
        defines[f"{chart['name']}/templates/{name}"] = tree
    return {
        name: renderer.render(tree, root, [{"$": root}])
        for name, tree in trees.items()
        if not name.startswith("_") and name.endswith(".yaml")
    }


def chart_objects(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The Kubernetes objects the chart renders to (empty documents left out)."""
    docs = []
    for name, text in render_chart(overrides, **kwargs).items():
        try:
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        except yaml.YAMLError as exc:
            raise TemplateError(f"{name} renders to invalid YAML: {exc}\n{text}") from None
    return docs


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name``."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        raise LookupError(f"{len(found)} {kind} named {name}")
    return found[0]

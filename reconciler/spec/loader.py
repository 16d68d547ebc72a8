"""Read one spec file (YAML or JSON) into plain data plus the file and line of every value.

Bad input of any kind (malformed YAML, odd tags, recursive or exploding aliases, deep nesting,
undecodable bytes) becomes a `SpecError` with file, line and column, never another exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import Origin, Problem, SpecError

SpecPath = tuple[str | int, ...]

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_C_LOADER = _Loader is not yaml.SafeLoader  # libyaml reports reader errors at byte offsets


class _JsonLoader(_Loader):  # type: ignore[misc,valid-type]
    """YAML 1.1 reads JSON's `1e5` and `1.0e5` as strings; a .json spec gets JSON's numbers."""


_JsonLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?[eE][-+]?[0-9]+$"),
    list("-0123456789"),
)

YAML_TAG = "tag:yaml.org,2002:"
_MAP_TAG, _SEQ_TAG, _MERGE_TAG = YAML_TAG + "map", YAML_TAG + "seq", YAML_TAG + "merge"
_SCALAR_TAGS = {YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
MAX_DEPTH = 100  # nesting levels; a spec needs a handful
MAX_NODES = 100_000  # values after alias expansion ("billion laughs" stops here)
MAX_NUMBER_CHARS = 1000  # longer numbers cannot be spec values (and Python's int() refuses past 4300 digits)
MAX_INT_BITS = 3400  # the same for 0x… / 0o… / 0b… ints, whose str() would refuse too


_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
          type(None): "null"}


def format_path(path: SpecPath) -> str:
    """`("services", "orchestrator", "args", 0)` → `services.orchestrator.args[0]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass
class Layer:
    """One parsed file: its data and where each path was written."""

    file: str
    data: Any
    origins: dict[SpecPath, Origin] = field(default_factory=dict)


class _TooLarge(Exception):
    """Alias expansion went past MAX_NODES: stop building at once."""


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(YAML_TAG):] if tag.startswith(YAML_TAG) else tag


class _Builder:
    """Turns a composed YAML node tree into Python values, recording origins.

    Every value is built afresh (aliases included), so no two paths share a mutable object.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.origins: dict[SpecPath, Origin] = {}
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.nodes = 0
        self.active: set[int] = set()  # ids of the collection nodes being built (recursive aliases)

    def origin(self, node: yaml.Node, at: SpecPath = ()) -> Origin:
        mark = node.start_mark
        return Origin(self.file, mark.line + 1, mark.column + 1, at)

    def problem(self, message: str, path: SpecPath, node: yaml.Node, expected: str | None = None,
                found: str | None = None) -> None:
        self.problems.append(Problem(message, format_path(path), self.origin(node), expected, found))

    def build(self, node: yaml.Node, path: SpecPath, origin: Origin) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge(node)
        self.origins[path] = origin
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if len(path) >= MAX_DEPTH:
            self.problem("nested too deeply", path, node, expected=f"at most {MAX_DEPTH} levels")
            return None
        if id(node) in self.active:
            self.problem("recursive alias: a value that contains itself", path, node,
                         expected="an alias (*name) outside the value its anchor (&name) is on")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                if node.tag != _MAP_TAG:
                    self.problem(f"unsupported YAML tag {_short_tag(node.tag)}", path, node, expected="a plain mapping")
                    return None
                return self.mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ_TAG:
                    self.problem(f"unsupported YAML tag {_short_tag(node.tag)}", path, node, expected="a plain list")
                    return None
                return [self.build(item, (*path, i), self.origin(item, (*path, i)))
                        for i, item in enumerate(node.value)]
        finally:
            self.active.discard(id(node))
        self.problem("unreadable YAML node", path, node)  # pragma: no cover - composer yields only the above
        return None

    def scalar(self, node: yaml.ScalarNode, path: SpecPath) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self.problem(f"unsupported YAML tag {_short_tag(node.tag)}", path, node,
                         expected="a string, number, boolean, null or date")
            return None
        if node.tag in (YAML_TAG + "int", YAML_TAG + "float") and len(node.value) > MAX_NUMBER_CHARS:
            self.problem("number too large", path, node, found=f"{len(node.value)} characters")
            return None
        try:
            value = self.constructor.construct_object(node, deep=True)
        except Exception as exc:  # any constructor failure (bad date, !!int xyz) is bad input
            what = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else str(exc)
            self.problem(f"cannot read value: {what}", path, node, found=repr(node.value)[:60])
            return None
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            self.problem("number too large", path, node, found=f"{len(node.value)} characters")
            return None
        return value

    def key(self, key_node: yaml.Node, path: SpecPath) -> str | None:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
            self.problem("mapping keys must be strings", path, key_node, expected="a string key", found=f"a {kind}")
            return None
        key = self.scalar(key_node, path)
        if key is None and key_node.tag != YAML_TAG + "null":
            return None  # already reported
        if not isinstance(key, str):
            self.problem("mapping keys must be strings", path, key_node, expected="a string key (quote it)",
                         found=repr(key))
            return None
        return key

    def mapping(self, node: yaml.MappingNode, path: SpecPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        sources: list[yaml.Node] = []
        own: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *anchor` or `<<: [*a, *b]`
                items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for item in items:
                    if isinstance(item, yaml.MappingNode):
                        sources.append(item)
                    else:
                        self.problem("`<<` merges a mapping or a list of mappings", path, item,
                                     expected="<<: *anchor or <<: [*a, *b]")
            else:
                own.append((key_node, value_node))
        # Merged keys first, earlier sources winning over later ones; the mapping's own keys override them.
        for source in reversed(sources):
            if id(source) in self.active:
                self.problem("recursive alias: a value that contains itself", path, source,
                             expected="an alias (*name) outside the value its anchor (&name) is on")
                continue
            self.active.add(id(source))
            try:
                pairs = [(k, v) for k, v in source.value if k.tag != _MERGE_TAG]
                nested = [(k, v) for k, v in source.value if k.tag == _MERGE_TAG]
                built = self.mapping(source, path) if nested else None
            finally:
                self.active.discard(id(source))
            if built is not None:
                for k, v in built.items():
                    self._replace(out, path, k)
                    out[k] = v
                continue
            for key_node, value_node in pairs:
                key = self.key(key_node, path)
                if key is None:
                    continue
                self._replace(out, path, key)
                out[key] = self.build(value_node, (*path, key), self.origin(key_node, (*path, key)))
        seen: set[str] = set()
        for key_node, value_node in own:
            key = self.key(key_node, path)
            if key is None:
                continue
            if key in seen:
                self.problem(f"duplicate key {key!r}", (*path, key), key_node, expected="each key once in a mapping")
            seen.add(key)
            self._replace(out, path, key)
            out[key] = self.build(value_node, (*path, key), self.origin(key_node, (*path, key)))
        return out

    def _replace(self, out: dict[str, Any], path: SpecPath, key: str) -> None:
        """Forget the origins under a key about to be written again (merge override, duplicate)."""
        if key not in out:
            return
        sub = (*path, key)
        n = len(sub)
        for p in [p for p in self.origins if len(p) > n and p[:n] == sub]:
            del self.origins[p]


def _offset_origin(file: str, text: str, position: int, in_bytes: bool) -> Origin:
    """Line and column of a character (or, from libyaml, byte) offset into `text`."""
    if in_bytes:
        prefix = text.encode("utf-8", "surrogatepass")[:position].decode("utf-8", "replace")
    else:
        prefix = text[:position]
    return Origin(file, prefix.count("\n") + 1, len(prefix) - (prefix.rfind("\n") + 1) + 1)


def _count_nodes(root: yaml.Node, stop: int) -> int:
    """The values written in the document, each node once (aliases not expanded); stops at `stop`."""
    seen: set[int] = set()
    todo = [root]
    while todo and len(seen) < stop:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                todo += (k, v)
    return len(seen)


def _mark_origin(file: str, text: str, mark: Any) -> tuple[Origin, bool]:
    """(where a YAML mark points, whether that is the end of the file). A mark at the end of the input
    (PyYAML's `<stream end>`, one line past a file ending in a newline) is moved back to just after
    the last character written, so the line exists in the file."""
    lines = text.splitlines()
    if mark.line < len(lines) and (mark.line < len(lines) - 1 or lines[mark.line][mark.column:].strip()):
        return Origin(file, mark.line + 1, mark.column + 1), False
    last = next((i for i in range(min(mark.line, len(lines) - 1), -1, -1) if lines[i].strip()), None)
    if last is None:
        return Origin(file, 1, 1), True
    return Origin(file, last + 1, len(lines[last].rstrip()) + 1), True


def _yaml_problem(exc: yaml.MarkedYAMLError, text: str, file: str) -> Problem:
    """The problem and where it is (PyYAML's problem mark); the context and where it started (the
    context mark), when that is elsewhere: `29:24: … did not find expected ',' or '}' (at the end
    of the file); while parsing a flow mapping that starts at 29:11`."""
    problem, context = exc.problem, exc.context
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        what = "; ".join(str(x) for x in (problem, context) if x)
        return Problem(f"malformed YAML: {what}", "", Origin(file, 1))
    origin, at_end = _mark_origin(file, text, mark)
    what = str(problem or context or "unreadable YAML")
    if at_end and "end of stream" not in what:
        what += " (at the end of the file)"
    if problem and context:
        where = ""
        if exc.context_mark is not None:
            ctx, _ = _mark_origin(file, text, exc.context_mark)
            if (ctx.line, ctx.col) != (origin.line, origin.col):
                where = f" that starts at {ctx.line}:{ctx.col}"
        what += f"; {context}{where}"
    return Problem(f"malformed YAML: {what}", "", origin)


# Line breaks for YAML 1.1 (PyYAML) but for nothing else that reads the file: YAML 1.2, JSON, editors,
# diffs and reviewers. Raw, they change what the file means: a raw NEL inside quotes is read as a space
# (two as a newline), and any of them ends a comment, so the text after it is read as YAML.
_YAML11_BREAKS = {"\x85": ("U+0085 (NEL)", "\\N", "\\u0085"), "\u2028": ("U+2028 (LINE SEPARATOR)", "\\L", "\\u2028"),
                  "\u2029": ("U+2029 (PARAGRAPH SEPARATOR)", "\\P", "\\u2029")}


def _yaml11_break(text: str, file: str, json: bool) -> Problem | None:
    """The first raw U+0085, U+2028 or U+2029 in the file, named with its line and column, or None."""
    at = min((i for i in map(text.find, _YAML11_BREAKS) if i >= 0), default=-1)
    if at < 0:
        return None
    name, yaml_escape, json_escape = _YAML11_BREAKS[text[at]]
    how = f"{json_escape} in a string" if json else f"{yaml_escape} or {json_escape} in a double-quoted string"
    reader = " (recon reads JSON with its YAML reader)" if json else ""
    return Problem(f"unreadable text: a raw {name} character, which YAML reads as a line break{reader}", "",
                   _offset_origin(file, text, at, False), expected=f"the escape {how}, or no such character")


def parse_text(text: str, file: str) -> Layer:
    """Parse YAML/JSON text; raise SpecError with line and column on malformed input."""
    is_json = file.lower().endswith(".json")
    loader = _JsonLoader if is_json else _Loader
    raw_break = _yaml11_break(text, file, is_json)
    if raw_break is not None:
        raise SpecError([raw_break])
    try:
        nodes = list(yaml.compose_all(text, Loader=loader))
    except yaml.MarkedYAMLError as exc:
        raise SpecError([_yaml_problem(exc, text, file)]) from None
    except yaml.reader.ReaderError as exc:  # e.g. a NUL or another control character
        position = exc.position if isinstance(exc.position, int) else 0
        origin = _offset_origin(file, text, position, _C_LOADER)
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise SpecError([Problem(f"unreadable text: character {char}: {exc.reason}", "", origin,
                                 expected="printable text (write control characters as escapes in quotes)")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(f"malformed YAML: {exc}", "", Origin(file, 1))]) from None
    except UnicodeError as exc:  # unpaired surrogates
        origin = _offset_origin(file, text, exc.start, False) if isinstance(exc, UnicodeEncodeError) else Origin(
            file, 1)
        raise SpecError([Problem(f"unreadable text: {exc.reason}", "", origin)]) from None
    except (ValueError, RecursionError) as exc:  # pure-Python loader: deep nesting; anything else odd
        raise SpecError([Problem(f"unreadable text: {exc}", "", Origin(file, 1))]) from None
    nodes = [n for n in nodes if n is not None]
    if len(nodes) > 1:
        raise SpecError([Problem("a spec file holds one YAML document; found several", "",
                                 Origin(file, nodes[1].start_mark.line + 1), expected="no `---` after the first "
                                 "document")])
    if not nodes:
        return Layer(file, {}, {(): Origin(file, 1)})
    builder = _Builder(file)
    try:
        data = builder.build(nodes[0], (), Origin(file, 1))
    except _TooLarge as exc:
        if _count_nodes(nodes[0], MAX_NODES + 1) > MAX_NODES:  # as written, not through aliases
            message = f"the document is too large: more than {MAX_NODES} values (the {MAX_NODES + 1}st is here)"
            origin = builder.origin(exc.args[0])
        else:
            message, origin = "the document is too large once aliases are expanded", Origin(file, 1)
        raise SpecError([Problem(message, "", origin, expected=f"at most {MAX_NODES} values; a spec needs a few "
                                 "hundred")]) from None
    if builder.problems:
        raise SpecError(builder.problems)
    if not isinstance(data, dict):
        what = _KINDS.get(type(data), type(data).__name__)
        raise SpecError([Problem("a spec file must be a mapping at the top", "", Origin(file, 1),
                                 expected="a mapping (version:, hosts:, services: …)", found=what)])
    return Layer(file, data, builder.origins)


def load_file(path: str | Path, display: str | None = None) -> Layer:
    """Read and parse one spec file; a missing or unreadable file is a SpecError."""
    name = display or str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise SpecError([Problem("spec file not found", "", Origin(name, 0))]) from None
    except (OSError, ValueError) as exc:  # a directory, no permission, a NUL in the name…
        raise SpecError([Problem(f"cannot read spec file: {getattr(exc, 'strerror', None) or exc}", "",
                                 Origin(name, 0))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = raw[: exc.start].decode("utf-8", "replace")
        origin = Origin(name, prefix.count("\n") + 1, len(prefix) - (prefix.rfind("\n") + 1) + 1)
        raise SpecError([Problem("the file is not UTF-8 text", "", origin, expected="UTF-8",
                                 found=f"byte 0x{raw[exc.start]:02x}")]) from None
    return parse_text(text, name)

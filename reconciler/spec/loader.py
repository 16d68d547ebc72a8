"""Read one spec file (YAML or JSON) into plain data plus the file and line of every value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import Origin, Problem, SpecError

SpecPath = tuple[str | int, ...]

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


class _Builder:
    """Turns a composed YAML node tree into Python values, recording origins."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.origins: dict[SpecPath, Origin] = {}
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()

    def origin(self, node: yaml.Node, at: SpecPath = ()) -> Origin:
        mark = node.start_mark
        return Origin(self.file, mark.line + 1, mark.column + 1, at)

    def build(self, node: yaml.Node, path: SpecPath, origin: Origin) -> Any:
        self.origins[path] = origin
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    self.problems.append(
                        Problem("mapping keys must be strings", format_path(path), self.origin(key_node),
                                expected="a string key", found=repr(key))
                    )
                    key = str(key)
                if key in out:
                    self.problems.append(
                        Problem(f"duplicate key {key!r}", format_path((*path, key)), self.origin(key_node),
                                expected="each key once in a mapping")
                    )
                out[key] = self.build(value_node, (*path, key), self.origin(key_node, (*path, key)))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), self.origin(item, (*path, i))) for i, item in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # e.g. a bad timestamp
            self.problems.append(Problem(f"cannot read value: {exc}", format_path(path), self.origin(node)))
            return None


def parse_text(text: str, file: str) -> Layer:
    """Parse YAML/JSON text; raise SpecError with line and column on malformed input."""
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        origin = Origin(file, mark.line + 1, mark.column + 1) if mark else Origin(file, 1)
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise SpecError([Problem(f"malformed YAML: {what}", "", origin)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(f"malformed YAML: {exc}", "", Origin(file, 1))]) from None
    except ValueError as exc:  # e.g. unpaired surrogates or NUL bytes
        raise SpecError([Problem(f"unreadable text: {exc}", "", Origin(file, 1))]) from None
    nodes = [n for n in nodes if n is not None]
    if len(nodes) > 1:
        raise SpecError([Problem("a spec file holds one YAML document; found several", "",
                                 Origin(file, nodes[1].start_mark.line + 1))])
    if not nodes:
        return Layer(file, {}, {(): Origin(file, 1)})
    builder = _Builder(file)
    data = builder.build(nodes[0], (), Origin(file, 1))
    if builder.problems:
        raise SpecError(builder.problems)
    if not isinstance(data, dict):
        raise SpecError([Problem("a spec file must be a mapping at the top", "", Origin(file, 1),
                                 expected="a mapping (version:, hosts:, services: …)",
                                 found=type(data).__name__)])
    return Layer(file, data, builder.origins)


def load_file(path: str | Path, display: str | None = None) -> Layer:
    """Read and parse one spec file; a missing or unreadable file is a SpecError."""
    name = display or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem("spec file not found", "", Origin(name, 0))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem(f"cannot read spec file: {exc}", "", Origin(name, 0))]) from None
    return parse_text(text, name)

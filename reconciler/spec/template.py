"""Expand `{placeholder}`s in args, env, config strings and health URLs (`{{`/`}}` are literal braces)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PLACEHOLDERS = {
    "service": "the service name",
    "version": "the service version",
    "port": "the service port",
    "config_path": "{config_dir}/{service}.toml",
    "install_dir": "the install directory",
    "release_dir": "{install_dir}/{service}/releases/{version}",
    "data_dir": "the service's data directory",
    "log_file": "{logs.dir}/{service}.log (needs `logs.dir`)",
    "host": "the host's name in the spec",
    "address": "the host's address (127.0.0.1 for connector: local)",
}
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def unknown_placeholders(text: str) -> list[str]:
    """Names used in `text` that are not placeholders recon knows."""
    return [m.group(1) for m in _TOKEN.finditer(text) if m.group(1) and m.group(1) not in PLACEHOLDERS]


def expand(text: str, values: Mapping[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = m.group(1)
        return str(values[name]) if name in values else token

    return _TOKEN.sub(sub, text)


def expand_tree(value: Any, values: Mapping[str, Any]) -> Any:
    """Expand every string in a nested structure; other values are returned as they are."""
    if isinstance(value, str):
        return expand(value, values) if "{" in value or "}" in value else value
    if isinstance(value, dict):
        return {k: expand_tree(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_tree(v, values) for v in value]
    return value

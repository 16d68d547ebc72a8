"""Control characters made visible, for every renderer; no imports beyond the standard library, so
`recon logs` prints without loading the plan model."""

from __future__ import annotations

import unicodedata


def printable(text: str, keep_newlines: bool = False) -> str:
    """Escape control characters (ESC, CR, NUL, C1 …) so they show as `\\x1b` and do nothing."""
    out: list[str] = []
    for ch in text:
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)

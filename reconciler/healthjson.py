"""`health.expect_json`: the top-level fields a health answer must carry, compared as JSON values.

Two implementations of one rule, kept side by side and tested against each other:
- `mismatch` (Python's json): the observation (plan, status, watch) checks the body the host sent back;
- `AWK` (POSIX awk, run on the host inside the health gate's loop, which cannot call back to recon): the
  platform's hosts have curl and awk (mawk is Essential on Debian) but need not have python3 or jq.

The rule: the body must be one JSON object (anything else, or trailing text, fails: "not JSON"); each
expected KEY must be a top-level member (the last one wins, as in Python) whose value equals VALUE as
JSON: strings after escapes are decoded (`"conn\\u0065cted"` is `"connected"`), numbers as exact
decimals (`1`, `1.0`, `10e-1` are equal; no float rounding), `true`/`false`/`null` only equal
themselves (`true` is not `1`). A member that is an object or an array never equals a scalar.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

Scalar = str | int | float | bool | None

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")   # a body's `"\\ud800"`: no UTF-8 can print it
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def canonical(value: Scalar) -> str:
    """The form both implementations compare: `s:TEXT`, `n:DIGITSeEXP` (no leading/trailing zeros), `true`,
    `false`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "s:" + value
    return canonical_number(repr(value) if isinstance(value, float) else str(value))


def canonical_number(token: str) -> str:
    """A JSON number token as exact decimal: sign, significant digits, exponent (`0` for any zero)."""
    m = re.fullmatch(r"(-?)([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?", token)
    if not m:
        raise ValueError(f"not a number: {token!r}")
    sign, whole, frac, exp = m.group(1), m.group(2), m.group(3) or "", int(m.group(4) or 0)
    digits = (whole + frac).lstrip("0")
    exp -= len(frac)
    if not digits:
        return "n:0"
    stripped = digits.rstrip("0")
    exp += len(digits) - len(stripped)
    return f"n:{sign}{stripped}e{exp}"


def display(value: Any) -> str:
    """A value as the detail shows it: JSON text, at most 60 characters, no tabs or newlines."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, Decimal) else str(value)
    text = re.sub(r"[\t\r\n]", " ", text)
    text = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)   # as the body wrote it: printable
    return text if len(text) <= 60 else text[:57] + "..."


def mismatch(expect: Mapping[str, Scalar], body: str | bytes | None) -> str | None:
    """None when `body` carries every expected field; else what is wrong, e.g.
    `database: expected "connected", found "disconnected"`."""
    if not expect:
        return None
    try:
        doc = json.loads(body if body is not None else "", parse_float=Decimal, parse_int=Decimal,
                         parse_constant=_reject)
    except (ValueError, InvalidOperation):
        return "the health answer is not JSON"
    if not isinstance(doc, dict):
        return "the health answer is not a JSON object"
    for key, want in expect.items():
        if key not in doc:
            return f"{_key(key)}: expected {display(want)}, found no such field"
        found = doc[key]
        if not _equal(want, found):
            shown = ("an object" if isinstance(found, dict) else "an array" if isinstance(found, list)
                     else display(found))
            return f"{_key(key)}: expected {display(want)}, found {shown}"
    return None


def _reject(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _key(key: str) -> str:
    return display(key)[1:-1]


def _equal(want: Scalar, found: Any) -> bool:
    if isinstance(found, (dict, list)):
        return False
    if isinstance(found, Decimal):
        return canonical(want) == canonical_number(_decimal_token(found))
    return canonical(want) == canonical(found)


def _decimal_token(d: Decimal) -> str:
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    return f"{'-' if sign else ''}{''.join(map(str, digits))}e{exp}"


# --------------------------------------------------------------------------------------------- on the host
def awk_args(expect: Mapping[str, Scalar]) -> list[str]:
    """The arguments `AWK` takes after its program: KEY, canonical value, display, for each field."""
    out: list[str] = []
    for key, want in expect.items():
        out += [key, canonical(want), display(want)]
    return out


# Reads the body on stdin (LC_ALL=C: bytes); prints nothing when every field matches, else one line saying
# what is wrong (as `mismatch` does). A tokenizer and a small state machine check that the whole body is
# JSON; members of the top-level object keep their canonical value (containers: `o`/`a`).
AWK = r"""
function fail(m) { gsub(/[\t\r\n]/, " ", m); print m; bad = 1; exit }
function hex(h,   i, v) { v = 0; h = tolower(h)
  for (i = 1; i <= 4; i++) v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1; return v }
function utf8(c) {
  if (c < 128) return sprintf("%c", c)
  if (c < 2048) return sprintf("%c%c", 192 + int(c / 64), 128 + c % 64)
  if (c < 65536) return sprintf("%c%c%c", 224 + int(c / 4096), 128 + int(c / 64) % 64, 128 + c % 64)
  return sprintf("%c%c%c%c", 240 + int(c / 262144), 128 + int(c / 4096) % 64, 128 + int(c / 64) % 64, 128 + c % 64)
}
function unesc(r,   o, i, n, ch, e, c, c2) { o = ""; n = length(r)
  for (i = 1; i <= n; i++) { ch = substr(r, i, 1)
    if (ch != "\\") { o = o ch; continue }
    e = substr(r, ++i, 1)
    if (e == "u") { c = hex(substr(r, i + 1, 4)); i += 4
      if (c >= 55296 && c < 56320 && substr(r, i + 1, 2) == "\\u") { c2 = hex(substr(r, i + 3, 4))
        if (c2 >= 56320 && c2 < 57344) { c = 65536 + (c - 55296) * 1024 + (c2 - 56320); i += 6 } }
      o = o utf8(c) }
    else if (e == "n") o = o "\n"; else if (e == "t") o = o "\t"; else if (e == "r") o = o "\r"
    else if (e == "b") o = o "\b"; else if (e == "f") o = o "\f"; else o = o e
  }
  return o }
function num(t,   sg, w, f, x, p, d, s) { sg = ""; if (substr(t, 1, 1) == "-") { sg = "-"; t = substr(t, 2) }
  x = 0; p = index(t, "e"); if (!p) p = index(t, "E"); if (p) { x = substr(t, p + 1) + 0; t = substr(t, 1, p - 1) }
  p = index(t, "."); if (p) { w = substr(t, 1, p - 1); f = substr(t, p + 1) } else { w = t; f = "" }
  d = w f; x -= length(f); sub(/^0+/, "", d); if (d == "") return "n:0"
  s = d; sub(/0+$/, "", s); x += length(d) - length(s); return "n:" sg s "e" x }
function val(c, r) {
  if (depth == 1 && state == "v1") { got[key] = c; raw[key] = r }
  done() }
function done() { if (depth == 0) state = "end"; else if (kind[depth] == "o") state = "ko"; else state = "ka" }
BEGIN { nw = 0
  for (i = 1; i + 2 < ARGC; i += 3) { wkey[++nw] = ARGV[i]; want[nw] = ARGV[i + 1]; wshow[nw] = ARGV[i + 2] }
  ARGC = 1 }
{ s = s $0 "\n" }
END {
  depth = 0; state = "v"; top = 0
  while (1) {
    sub(/^[ \t\r\n]+/, "", s)
    if (s == "") break
    ch = substr(s, 1, 1)
    if (state == "end") fail("the health answer is not JSON")
    if (ch == "\"") {
      if (!match(s, /^"([^"\\]|\\["\\\/bfnrt]|\\u[0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f])*"/))
        fail("the health answer is not JSON")
      r = substr(s, 1, RLENGTH); s = substr(s, RLENGTH + 1)
      if (r ~ /[\001-\037]/) fail("the health answer is not JSON")
      if (state == "k" || state == "k0") {
        if (depth == 1) key = unesc(substr(r, 2, length(r) - 2))
        state = "c"; continue }
      if (state != "v" && state != "v0" && state != "v1") fail("the health answer is not JSON")
      val("s:" unesc(substr(r, 2, length(r) - 2)), r); continue }
    if (ch ~ /[-0-9]/) {
      if (!match(s, /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/)) fail("the health answer is not JSON")
      r = substr(s, 1, RLENGTH); s = substr(s, RLENGTH + 1)
      if (state != "v" && state != "v0" && state != "v1") fail("the health answer is not JSON")
      val(num(r), r); continue }
    if (ch ~ /[tfn]/) {
      if (substr(s, 1, 4) == "true") r = "true"; else if (substr(s, 1, 5) == "false") r = "false"
      else if (substr(s, 1, 4) == "null") r = "null"; else fail("the health answer is not JSON")
      s = substr(s, length(r) + 1)
      if (state != "v" && state != "v0" && state != "v1") fail("the health answer is not JSON")
      val(r, r); continue }
    s = substr(s, 2)
    if (ch == "{" || ch == "[") {
      if (state != "v" && state != "v0" && state != "v1") fail("the health answer is not JSON")
      if (depth == 0 && ch == "[") fail("the health answer is not a JSON object")
      if (depth == 1 && state == "v1") { got[key] = (ch == "{" ? "o" : "a"); raw[key] = "" }
      if (depth == 0) top = 1
      kind[++depth] = (ch == "{" ? "o" : "a"); state = (ch == "{" ? "k0" : "v0"); continue }
    if (ch == "}" || ch == "]") {
      if (ch == "}" && !(state == "k0" || state == "ko")) fail("the health answer is not JSON")
      if (ch == "]" && !(state == "v0" || state == "ka")) fail("the health answer is not JSON")
      depth--; done(); continue }
    if (ch == ":") {
      if (state != "c") fail("the health answer is not JSON")
      state = (depth == 1 ? "v1" : "v"); continue }
    if (ch == ",") {
      if (state == "ko") state = "k"; else if (state == "ka") state = "v"; else fail("the health answer is not JSON")
      continue }
    fail("the health answer is not JSON")
  }
  if (state != "end") fail("the health answer is not JSON")
  if (!top) fail("the health answer is not a JSON object")
  for (i = 1; i <= nw; i++) { k = wkey[i]
    if (!(k in got)) fail(k ": expected " wshow[i] ", found no such field")
    if (got[k] != want[i]) {
      f = got[k] == "o" ? "an object" : got[k] == "a" ? "an array" : raw[k]
      if (length(f) > 60) f = substr(f, 1, 57) "..."
      fail(k ": expected " wshow[i] ", found " f) } }
}
"""


def awk_command(expect: Mapping[str, Scalar], quote: Any) -> str:
    """The shell words that run the matcher on stdin: `LC_ALL=C awk PROGRAM ARGS...` (quoted with `quote`)."""
    return "LC_ALL=C awk " + " ".join(quote(x) for x in [AWK, *awk_args(expect)])


def expect_items(expect: Mapping[str, Scalar] | Sequence[tuple[str, Scalar]]) -> tuple[tuple[str, Scalar], ...]:
    """A hashable, ordered form of an expectation (for frozen dataclasses)."""
    return tuple(expect.items()) if isinstance(expect, Mapping) else tuple(expect)

"""Re-pin the stand-in artifacts' sha256 in the specs and the benchmark's rendered files after service.py
changed:

    .venv/bin/python -m reconciler.standin.build --out artifacts && .venv/bin/python scripts/repin-artifacts.py
"""

import re
from pathlib import Path

FILES = ("specs/platform.yaml", "specs/overrides/upgrade.yaml", "bench/equivalent/rendered/services.json")
PIN = re.compile(r'(artifacts/)([a-z0-9.-]+?)(["]?,\s*"?sha256"?:\s*")([0-9a-f]{64})')


def main() -> None:
    sums = dict(reversed(line.split()) for line in Path("artifacts/SHA256SUMS").read_text().splitlines())
    changed = 0
    for name in FILES:
        path = Path(name)
        text = path.read_text()
        new = PIN.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + sums.get(m.group(2), m.group(4)), text)
        changed += sum(a != b for a, b in zip(PIN.findall(text), PIN.findall(new), strict=True))
        path.write_text(new)
    print(f"re-pinned {changed}")


if __name__ == "__main__":
    main()

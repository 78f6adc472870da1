"""Check that the venv holds exactly what requirements*.txt pin: nothing unpinned, no other version.

Run by .ci/run right after `make install` in a fresh venv, where anything installed that is not
pinned means a transitive dependency slipped in unpinned (so installs are not reproducible).

    .venv/bin/python scripts/check_pins.py [requirements-dev.txt]

One installed distribution is not a requirement: this project itself, which `make install` adds
as an editable install (pyproject.toml) so that the `dashboard-auth` command exists. It comes from
this checkout, not from a registry, so there is no version to pin; it is let through only when it
is exactly that: the name pyproject.toml declares, installed editable from this directory.
"""
from __future__ import annotations

import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path, seen: set[Path] | None = None) -> dict[str, str]:
    seen = seen if seen is not None else set()
    if path in seen:
        return {}
    seen.add(path)
    found: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            found.update(pins(path.parent / line.split(None, 1)[1], seen))
            continue
        match = PIN.match(line)
        if not match:
            sys.exit(f"{path}: not pinned with ==: {line!r}")
        found[canonical(match[1])] = match[3]
    return found


def is_this_project(distribution: metadata.Distribution) -> bool:
    """This checkout, installed editable by `make install` (its direct_url.json says so)."""
    try:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
        origin = json.loads(distribution.read_text("direct_url.json") or "{}")
    except (OSError, KeyError, ValueError):
        return False
    return (
        canonical(distribution.metadata["Name"]) == canonical(project)
        and origin.get("dir_info", {}).get("editable") is True
        and origin.get("url") == ROOT.as_uri()
    )


def main() -> int:
    wanted = pins(Path(sys.argv[1] if len(sys.argv) > 1 else "requirements-dev.txt"))
    installed = {
        canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if not is_this_project(d)
    }
    problems = [f"unpinned: {name}=={version}" for name, version in sorted(installed.items()) if name not in wanted]
    problems += [
        f"pinned {name}=={version} but installed {installed.get(name, 'nothing')}"
        for name, version in sorted(wanted.items())
        if installed.get(name) != version
    ]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"pins: {len(wanted)} pinned, {len(installed)} installed, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""4. Memory and size: a container's peak RSS, and what the deployment package holds.

- Peak RSS (VmHWM, read in the child: its ru_maxrss would carry the parent's peak across exec) of a cold container after its first login, as deployed
  (bench/cold_start.py runs those children), against the floor process of the same path; and of
  the warm container after its ~1200 logins (bench/login_warm.py). Target: under 256 MB with room,
  taken here as <= 75 % of it (192 MB).
- `chalice package --stage prod --merge-template .chalice/merge-prod.json` run on a copy of the app in
  a temporary directory (the project tree is not touched; chalice's wheel cache is copied in from
  .chalice/deployments and kept between runs under the temp dir), with its bytecode added as
  scripts/package.py adds it (BENCH_BYTECODE=0: left out, for a comparison on the same tree) and
  slimmed as `make package` slims it: deployment.zip zipped and unzipped,
  against the floor = the unzipped size of the distributions that a refresh, a token login, a kubeconfig
  login and a CSRF token actually import (sys.modules in a deployed container, bench/cold_child.py scan;
  with the shipped .pyc of those modules).
  The biggest distributions are listed, marked with what imports them, if anything.
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import zipfile

from bench.stats import Row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RSS_BUDGET_MB = 256 * 0.75
CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "dashboard-auth-bench-chalice-cache")
PACKAGE_TIMEOUT = 170


def build_package(world) -> tuple[str | None, str]:
    """deployment.zip built from a copy of the app and slimmed as `make package` does; (path or None, a note)."""
    work = os.path.join(world.tmp, "package")
    app_copy = os.path.join(work, "app")
    os.makedirs(os.path.join(app_copy, ".chalice"))
    shutil.copy2(os.path.join(ROOT, "app.py"), app_copy)
    shutil.copy2(os.path.join(ROOT, "requirements.txt"), app_copy)
    shutil.copytree(os.path.join(ROOT, "chalicelib"), os.path.join(app_copy, "chalicelib"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in os.listdir(os.path.join(ROOT, ".chalice")):
        if name.endswith(".json"):
            shutil.copy2(os.path.join(ROOT, ".chalice", name), os.path.join(app_copy, ".chalice"))
    deployments = os.path.join(app_copy, ".chalice", "deployments")
    os.makedirs(deployments)
    for source in (os.path.join(ROOT, ".chalice", "deployments"), CACHE):
        if os.path.isdir(source):
            for name in os.listdir(source):
                if name.endswith(".zip") and not os.path.exists(os.path.join(deployments, name)):
                    os.link(os.path.join(source, name), os.path.join(deployments, name)) if _same_fs(source, deployments) \
                        else shutil.copy2(os.path.join(source, name), deployments)
    out = os.path.join(work, "out")
    chalice = os.path.join(os.path.dirname(sys.executable), "chalice")
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        process = subprocess.run([chalice, "package", "--stage", "prod", "--merge-template",
                                  ".chalice/merge-prod.json", out], cwd=app_copy, env=env,
                                 capture_output=True, text=True, timeout=PACKAGE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"chalice package failed: {type(error).__name__}"
    if process.returncode != 0:
        return None, f"chalice package exited {process.returncode}: {process.stderr.strip()[-300:]}"
    os.makedirs(CACHE, exist_ok=True)  # keep chalice's dependency zips for the next run (outside the project)
    for name in os.listdir(deployments):
        if not os.path.exists(os.path.join(CACHE, name)):
            shutil.copy2(os.path.join(deployments, name), CACHE)
    zip_path = os.path.join(out, "deployment.zip")
    # What `make package` and CI ship: the zip with its bytecode (scripts/package.py's step after chalice
    # package), without the packages no code path imports.
    # BENCH_BYTECODE=0 leaves it out, to measure the cold start without it on the same tree.
    if os.environ.get("BENCH_BYTECODE", "1") == "0":
        bytecode_note = "bytecode left out (BENCH_BYTECODE=0)"
    else:  # in a child, so that compiling does not raise this process's peak RSS (children inherit ru_maxrss)
        step = subprocess.run([sys.executable, "-c", _BYTECODE_STEP, ROOT, zip_path], capture_output=True,
                              text=True, timeout=PACKAGE_TIMEOUT)
        if step.returncode != 0:
            return None, f"the bytecode step exited {step.returncode}: {step.stderr.strip()[-300:]}"
        bytecode_note = step.stdout.strip()
    slimmed = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "slim_package.py"), zip_path],
                             capture_output=True, text=True, timeout=PACKAGE_TIMEOUT)
    if slimmed.returncode != 0:
        return None, f"scripts/slim_package.py exited {slimmed.returncode}: {slimmed.stderr.strip()[-300:]}"
    return zip_path, f"built and slimmed (scripts/slim_package.py), as `make package` ships it; {bytecode_note}"


# scripts/package.py's bytecode step alone (the rest checks a stage's registry, which this copy of the app lacks).
_BYTECODE_STEP = """
import importlib.util, json, os, sys
from pathlib import Path
root, zip_path = sys.argv[1:]
spec = importlib.util.spec_from_file_location("package_script", os.path.join(root, "scripts", "package.py"))
package = importlib.util.module_from_spec(spec)
spec.loader.exec_module(package)
with open(os.path.join(os.path.dirname(zip_path), "sam.json"), encoding="utf-8") as handle:
    template = json.load(handle)
print(package.ship_bytecode(Path(zip_path), template, "prod"))
"""


def _same_fs(a: str, b: str) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def unpack(zip_path: str, world) -> str:
    target = os.path.join(world.tmp, "task")  # what Lambda unpacks to /var/task
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(target)
    return target


# ---------------------------------------------------------------- what the zip holds


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _source_of(name: str) -> str:
    """DIR/__pycache__/STEM.TAG.pyc -> DIR/STEM.py (scripts/package.py's bytecode); any other name as it is."""
    match = re.fullmatch(r"((?:.*/)?)__pycache__/([^/]+)\.[^./]+\.pyc", name)
    return f"{match[1]}{match[2]}.py" if match else name


def distributions(zip_path: str) -> dict[str, dict]:
    """{distribution: {"size", "compressed", "modules"}}, files attributed by each dist-info's RECORD;
    files no RECORD claims (app.py, chalicelib/, chalice's runtime) are the distribution "(app)"."""
    with zipfile.ZipFile(zip_path) as archive:
        infos = {info.filename: info for info in archive.infolist() if not info.is_dir()}
        owner: dict[str, str] = {}
        modules: dict[str, set[str]] = collections.defaultdict(set)
        for name in infos:
            match = re.fullmatch(r"([^/]+)-[^/-]+\.dist-info/RECORD", name)
            if not match:
                continue
            dist = match[1]
            for line in archive.read(name).decode("utf-8", "replace").splitlines():
                path = line.split(",")[0]
                if path in infos:
                    owner[path] = dist
                    top = path.split("/")[0]
                    if not top.endswith((".dist-info", ".data")) and not top.startswith("__pycache__"):
                        modules[dist].add(re.split(r"\.(py|cpython|abi3|so)", top)[0])
    result: dict[str, dict] = {}
    for name, info in infos.items():
        dist = owner.get(_source_of(name), "(app)")  # shipped bytecode counts with its source's distribution
        entry = result.setdefault(dist, {"size": 0, "compressed": 0, "modules": set()})
        entry["size"] += info.file_size
        entry["compressed"] += info.compress_size
    for dist, names in modules.items():
        result[dist]["modules"] = names
    result.setdefault("(app)", {"size": 0, "compressed": 0, "modules": set()})["modules"] |= {"app", "chalicelib", "chalice"}
    return result


def _parts(zip_path: str, dist_modules: set[str], loaded: set[str], top: int = 3) -> str:
    """The largest second-level parts of a distribution, each as loaded/shipped MiB."""
    sizes: collections.Counter = collections.Counter()
    used: collections.Counter = collections.Counter()
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            parts = info.filename.split("/")
            if parts[0] in dist_modules and len(parts) > 2:
                key = "/".join(parts[:2]) if len(parts) == 3 or parts[1] not in ("client",) else "/".join(parts[:3])
                sizes[key] += info.file_size
                if info.filename in loaded:
                    used[key] += info.file_size
    return ", ".join(f"{part}/ {used[part] / 2**20:.1f}/{size / 2**20:.1f}" for part, size in sizes.most_common(top))


def _loaded_bytes(zip_path: str, files: list[str], task_dir: str | None):
    """Bytes of the zip's module files (.py and extension modules) a deployed container loaded, and the shipped
    .pyc of those modules (the container reads the .pyc; the .py must be there too: Python finds a module
    by its source, then its __pycache__)."""
    if not files or not task_dir:
        return None
    prefix = task_dir.rstrip("/") + "/"
    loaded = {f[len(prefix):] for f in files if f.startswith(prefix)}
    with zipfile.ZipFile(zip_path) as archive:
        loaded |= {name for name in archive.namelist() if name.endswith(".pyc") and _source_of(name) in loaded}
    dists = distributions(zip_path)
    owner = {}
    for dist, entry in dists.items():
        for module in entry["modules"]:
            owner[module] = dist
    per_dist: collections.Counter = collections.Counter()
    compressed = 0
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            if info.filename in loaded:
                top = re.split(r"\.(py|cpython|abi3|so)", info.filename.split("/")[0])[0]
                per_dist[owner.get(top, "(app)")] += info.file_size
                compressed += info.compress_size
    return sum(per_dist.values()), compressed, per_dist


def run(world, zip_path: str | None, note: str, cold: dict | None, login_warm: dict | None):
    rows: list[Row] = []
    notes: list[str] = []
    if cold and cold.get("rss"):
        rss = cold["rss"]
        value, floor = rss["login"], rss["floor-login"]
        rows.append(Row("4. peak RSS, cold container after 1st login", f"{value:.1f} MB", f"{floor:.1f} MB",
                        f"{value / floor:.2f}", f"<= {RSS_BUDGET_MB:.0f} MB (75% of 256)",
                        "yes" if value <= RSS_BUDGET_MB else "NO"))
        value, floor = rss["refresh"], rss["floor-refresh"]
        rows.append(Row("4. peak RSS, cold container after 1st refresh", f"{value:.1f} MB", f"{floor:.1f} MB",
                        f"{value / floor:.2f}", f"<= {RSS_BUDGET_MB:.0f} MB", "yes" if value <= RSS_BUDGET_MB else "NO"))
    if login_warm:
        value = login_warm["max_rss_mb"]
        floor = cold["rss"]["floor-login"] if cold and cold.get("rss") else float("nan")
        rows.append(Row(f"4. peak RSS, warm container after {login_warm['logins']} logins", f"{value:.1f} MB",
                        f"{floor:.1f} MB", f"{value / floor:.2f}", f"<= {RSS_BUDGET_MB:.0f} MB",
                        "yes" if value <= RSS_BUDGET_MB else "NO"))
    if zip_path is None:
        notes.append(f"deployment.zip: not measured ({note})")
        return rows, notes
    notes.append(f"deployment.zip: {note}")
    zipped = os.path.getsize(zip_path)
    dists = distributions(zip_path)
    unzipped = sum(d["size"] for d in dists.values())
    steps = (cold or {}).get("steps") or {}
    used_by: dict[str, list[str]] = {}
    for dist, entry in dists.items():
        used_by[dist] = [step for step, tops in steps.items() if entry["modules"] & set(tops)]
    imported = sum(entry["size"] for dist, entry in dists.items() if used_by[dist])
    prefix = (world.deployed_dir or "").rstrip("/") + "/"
    loaded_files = {f[len(prefix):] for f in (cold or {}).get("files") or [] if f.startswith(prefix)}
    with zipfile.ZipFile(zip_path) as archive:
        loaded_files |= {name for name in archive.namelist() if _source_of(name) in loaded_files and name != _source_of(name)}
    loaded = _loaded_bytes(zip_path, (cold or {}).get("files") or [], world.deployed_dir)
    if loaded:
        needed, needed_zipped, per_dist = loaded
        floor_note = "module files loaded"
    else:
        needed = needed_zipped = 0
        per_dist = {}
        floor_note = "n/a"
    rows.append(Row("4. deployment.zip, zipped", f"{zipped / 2**20:.1f} MiB", f"{needed_zipped / 2**20:.1f} MiB ({floor_note})",
                    f"{zipped / needed_zipped:.2f}" if needed_zipped else "n/a", "<= 50 MB (direct upload)",
                    "yes" if zipped <= 50 * 10**6 else "NO"))
    rows.append(Row("4. deployment.zip, unzipped", f"{unzipped / 2**20:.1f} MiB", f"{needed / 2**20:.1f} MiB ({floor_note})",
                    f"{unzipped / needed:.2f}" if needed else "n/a", "<= 250 MB (Lambda)",
                    "yes" if unzipped <= 250 * 10**6 else "NO"))
    lines = ["deployment.zip, biggest distributions (unzipped), and the first step that imports them in a deployed "
             "container doing, in order: a refresh, a token login, a kubeconfig login, a CSRF token:"]
    for dist, entry in sorted(dists.items(), key=lambda item: -item[1]["size"])[:14]:
        users = used_by[dist]
        if not steps:
            mark = "(not checked)"
        elif not users:
            mark = "NOT IMPORTED on any path"
        else:
            mark = "first imported by: " + users[0]
        part = _parts(zip_path, entry["modules"], loaded_files) if entry["size"] > 5 * 2**20 else ""
        lines.append(f"  {entry['size'] / 2**20:7.2f} MiB  {dist:<22} {mark}"
                     + (f"  (largest parts, loaded/shipped MiB: {part})" if part else ""))
    unused = sum(entry["size"] for dist, entry in dists.items() if steps and not used_by[dist])
    lines.append(f"  not imported on any path: {unused / 2**20:.1f} MiB of {unzipped / 2**20:.1f} MiB unzipped")
    lines.append(f"  distributions imported at all: {imported / 2**20:.1f} MiB; module files actually loaded (the floor "
                 f"above, after a refresh, a token login, a kubeconfig login and a CSRF token): {needed / 2**20:.1f} MiB; "
                 "loaded/shipped per distribution: " + ", ".join(
                     f"{dist} {per_dist.get(dist, 0) / 2**20:.1f}/{dists[dist]['size'] / 2**20:.1f}"
                     for dist in sorted(dists, key=lambda d: -dists[d]["size"])[:8]) + " MiB")
    notes.append("\n".join(lines))
    return rows, notes

"""Package a deployed stage, refusing a broken one: `make package` and .ci/run call this.

    .venv/bin/python scripts/package.py STAGE OUTDIR [--allow-placeholders]

Before `chalice package` runs, the stage's settings in .chalice/config.json are checked as the
function would read them (chalicelib.settings), and its cluster registry (CLUSTERS_FILE, which must
be under chalicelib/, the only directory deployed besides app.py) is parsed by
chalicelib.clusters.parse_registry. A missing or invalid registry, an invalid setting (such as a
malformed CORS_ALLOWED_ORIGINS) or a placeholder left from the repository (an origin on a reserved
example domain such as https://dashboard.example.com, or clusters.example.json copied unchanged)
stops here with one sentence and exit status 2, and nothing is packaged.

--allow-placeholders (make package ALLOW_PLACEHOLDERS=1) lets the two placeholders through, with a
warning: the repository itself has no registry and names example origins, and CI packages it that
way to lint and test the template. Such a package cannot log anyone in. Invalid settings and an
invalid registry are refused even then.

The template is `chalice package --stage STAGE --merge-template` of .chalice/merge-STAGE.json plus
what depends on the stage's settings: API Gateway's own answers (DEFAULT_4XX, DEFAULT_5XX: throttled,
WAF-blocked, unknown route, gateway timeout) carry CORS headers that follow CORS_ALLOWED_ORIGINS.
The origins are a template parameter, CorsAllowedOrigins, whose default is the stage's
CORS_ALLOWED_ORIGINS: the function reads it, and so do the gateway responses, through conditions.
API Gateway cannot echo a request's Origin only when it is on a list, so:
- one allowed origin: Access-Control-Allow-Origin is that origin;
- several, or none (a same-origin deployment): no Access-Control-Allow-Origin at all. A frontend on
  another origin then sees API Gateway's own errors (a 429 among them) as a failed request without a
  status, never one origin's answer labelled for another; echoing any Origin would let every site
  read them, which the list exists to prevent.

SnapStart (a stage's "snapstart": true in .chalice/config.json) is applied to the packaged template
afterwards: the API function gets SnapStart on published versions and an alias (SAM's
AutoPublishAlias), and API Gateway's integration and the invoke permission name the alias, so
requests reach the snapshotted version. Lambda offers SnapStart for python3.12 and newer only, and
chalice takes the function's runtime from the Python that runs it: packaged by an older Python,
the stage is packaged without SnapStart, and one line says so.

Bytecode ships in the zip: after `chalice package`, deployment.zip is rewritten with a .pyc beside
every .py of the app, chalice's runtime and the vendored dependencies (__pycache__/NAME.cpython-3XX.pyc),
so a cold container runs them without compiling them (on Lambda, /var/task is read-only: without
these, every cold start compiles every module it imports). They are unchecked hash-based .pyc (PEP 552):
Python loads them without comparing them to the sources' mtimes or contents, so the zip's fixed
timestamps do not matter, and they are only right for the sources they were compiled from, which
scripts/slim_package.py checks. Compiled in memory under their names in the zip, with the zip's fixed
timestamp and file mode: the package stays the same bytes for the same sources. A .pyc is only
loaded by the CPython minor version that wrote it, so bytecode is added only when the Python running
this script is the runtime of the packaged functions (chalice takes the runtime from the Python that
runs it, so normally it is); otherwise it is left out, and one line says so.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import marshal
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from urllib.parse import urlsplit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chalicelib import clusters, settings  # noqa: E402

# Names reserved for examples and tests (RFC 2606, RFC 6761): an origin there is a placeholder.
RESERVED_HOST = re.compile(r"(^|\.)(example\.(com|net|org)|example|invalid|test)$", re.I)
GATEWAY_RESPONSES = ("DEFAULT_4XX", "DEFAULT_5XX")
API_FUNCTION = "APIHandler"  # chalice's logical id of the API function
SNAPSTART_ALIAS = "live"
SNAPSTART_MIN_PYTHON = (3, 12)


class Refused(Exception):
    """The stage cannot be packaged; the message is one sentence saying why and what to do."""


def stage_environment(app_dir: Path, stage: str) -> dict[str, str]:
    config = json.loads((app_dir / ".chalice" / "config.json").read_text())
    if stage not in config.get("stages", {}) or stage == "local":
        deployed = sorted(s for s in config.get("stages", {}) if s != "local")
        raise Refused(f"stage {stage!r} is not a deployed stage of .chalice/config.json ({', '.join(deployed)})")
    return {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}


def stage_snapstart(app_dir: Path, stage: str) -> bool:
    """The stage's "snapstart" setting in .chalice/config.json (off unless given)."""
    config = json.loads((app_dir / ".chalice" / "config.json").read_text())
    value = config.get("stages", {}).get(stage, {}).get("snapstart", False)
    if not isinstance(value, bool):
        raise Refused(f'.chalice/config.json (stage {stage}): "snapstart" must be true or false, got {value!r}')
    return value


def snapstart_supported(runtime: object) -> bool:
    """Whether Lambda offers SnapStart for this runtime (of Python's: python3.12 and newer)."""
    match = re.fullmatch(r"python3\.(\d+)", runtime) if isinstance(runtime, str) else None
    return bool(match) and int(match[1]) >= SNAPSTART_MIN_PYTHON[1]


def _swap_function_arn(value, old: str, new: str):
    """`value` with every ${old} in a string (the integrations' Fn::Sub URIs) written ${new}."""
    if isinstance(value, str):
        return value.replace("${" + old + "}", "${" + new + "}")
    if isinstance(value, list):
        return [_swap_function_arn(item, old, new) for item in value]
    if isinstance(value, dict):
        return {key: _swap_function_arn(item, old, new) for key, item in value.items()}
    return value


def apply_snapstart(template: dict, stage: str, enabled: bool) -> str | None:
    """Turn SnapStart on for the API function of a packaged template, in place, if the runtime has it.

    Returns the line to print: what was done, or why SnapStart was left off (None when the stage does
    not ask for it). The rotation function is invoked by Secrets Manager a few times a month: no
    SnapStart, no alias.
    """
    if not enabled:
        return None
    resources = template["Resources"]
    function = resources[API_FUNCTION]["Properties"]
    runtime = function.get("Runtime")
    if not snapstart_supported(runtime):
        return (f"SnapStart left off for stage {stage}: the packaged runtime is {runtime} (the Python running "
                f"chalice package) and Lambda offers SnapStart for python3.12 and newer only; package with "
                f"Python 3.12+ to get it")
    function["SnapStart"] = {"ApplyOn": "PublishedVersions"}
    function["AutoPublishAlias"] = SNAPSTART_ALIAS
    # SAM names the alias it creates <function>Alias<alias>; Ref of an alias is its ARN.
    alias = f"{API_FUNCTION}Alias{SNAPSTART_ALIAS}"
    api = resources["RestAPI"]["Properties"]
    api["DefinitionBody"] = _swap_function_arn(api["DefinitionBody"], f"{API_FUNCTION}.Arn", alias)
    resources[f"{API_FUNCTION}InvokePermission"]["Properties"]["FunctionName"] = {"Ref": alias}
    return (f"SnapStart on for stage {stage}: {API_FUNCTION} ({runtime}) publishes a version on every deploy, "
            f"served through its alias {SNAPSTART_ALIAS!r}")


# PEP 552's flags word: bit 0 hash-based, bit 1 check_source. Unchecked: the source is never read back.
PYC_UNCHECKED_HASH = 0b01


def pyc_name(source: str, cache_tag: str) -> str:
    """Where Python looks for the bytecode of `source` (a path inside the zip): DIR/__pycache__/STEM.TAG.pyc."""
    directory, _, filename = source.rpartition("/")
    return (directory + "/" if directory else "") + f"__pycache__/{filename[:-len('.py')]}.{cache_tag}.pyc"


def unchecked_pyc(source: bytes, name: str) -> bytes:
    """An unchecked hash-based .pyc of `source` for this interpreter, as py_compile writes it with
    PycInvalidationMode.UNCHECKED_HASH (not optimised: Lambda runs python without -O). Its code objects
    are named after `name`, the path inside the zip (Python corrects that to the real path when it loads one)."""
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    return (importlib.util.MAGIC_NUMBER + PYC_UNCHECKED_HASH.to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def packaged_runtimes(template: dict) -> set:
    return {resource.get("Properties", {}).get("Runtime") for resource in template["Resources"].values()
            if resource.get("Type") == "AWS::Serverless::Function"}


def ship_bytecode(zip_path: Path, template: dict, stage: str) -> str:
    """Rewrite deployment.zip with an unchecked-hash .pyc beside each .py, if this Python is the packaged
    runtime; the line to print says what was done or why bytecode was left out."""
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    runtimes = packaged_runtimes(template)
    cache_tag = sys.implementation.cache_tag
    if sys.implementation.name != "cpython" or not cache_tag or runtimes != {here}:
        shown = ", ".join(sorted(str(runtime) for runtime in runtimes))
        return (f"bytecode left out of stage {stage}'s deployment.zip: the packaged runtime is {shown} and this is "
                f"{sys.implementation.name} {sys.version_info.major}.{sys.version_info.minor}, whose .pyc files that "
                f"runtime would not load; run scripts/package.py with the runtime's CPython to ship them")
    rewritten = zip_path.with_suffix(".zip.pyc-tmp")
    compiled = skipped = 0
    added = 0
    with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            # a __pycache__ chalice copied from a working tree (timestamp .pyc, checked against 1980 mtimes)
            if "__pycache__/" in item.filename or item.filename.endswith(".pyc"):
                continue
            data = source.read(item)
            target.writestr(copy.copy(item), data)  # a copy: writestr sets the entry's offset in the target
            if not item.filename.endswith(".py") or item.is_dir():
                continue
            try:
                pyc = unchecked_pyc(data, item.filename)
            except (SyntaxError, ValueError):  # not Python this runtime can import: it compiles nothing either
                skipped += 1
                continue
            entry = zipfile.ZipInfo(pyc_name(item.filename, cache_tag), date_time=item.date_time)
            entry.external_attr, entry.create_system = item.external_attr, item.create_system
            entry.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(entry, pyc)
            compiled += 1
            added += len(pyc)
    os.replace(rewritten, zip_path)
    return (f"bytecode: {compiled} modules of stage {stage}'s deployment.zip compiled for {here} (unchecked "
            f"hash-based .pyc, PEP 552), {added / 2**20:.1f} MiB unzipped added"
            + (f"; {skipped} files that do not compile left as source only" if skipped else ""))


def check(app_dir: Path, stage: str, allow_placeholders: bool = False) -> tuple[tuple[str, ...], list[str]]:
    """The stage's allowed origins, and the warnings let through; raises Refused."""
    env = stage_environment(app_dir, stage)
    where = f".chalice/config.json (stage {stage})"
    try:
        loaded = settings.load(env, str(app_dir))
    except settings.SettingsError as error:
        raise Refused(f"{where}: {error}") from None
    warnings: list[str] = []

    def placeholder(message: str) -> None:
        if not allow_placeholders:
            raise Refused(message + "; or, for a template that cannot log anyone in, pass --allow-placeholders "
                          "(make package ALLOW_PLACEHOLDERS=1)")
        warnings.append(message)

    if not loaded.clusters_file:
        raise Refused(f"{where} sets no CLUSTERS_FILE, so the deployed function would look for a kubeconfig "
                      "Lambda does not have: set it to chalicelib/clusters.json")
    registry_path = Path(settings.resolve_path(loaded, loaded.clusters_file)).resolve()
    shown = os.path.relpath(registry_path, app_dir)
    if not registry_path.is_relative_to((app_dir / "chalicelib").resolve()):
        raise Refused(f"{where}: CLUSTERS_FILE {loaded.clusters_file} is outside chalicelib/, "
                      "and only app.py and chalicelib/ are deployed")
    if not registry_path.is_file():
        placeholder(f"the cluster registry {shown} does not exist: copy clusters.example.json there "
                    "and list your clusters")
    else:
        text = registry_path.read_text(encoding="utf-8")
        try:
            clusters.parse_registry(shown, text, str(app_dir))
        except clusters.ClusterConfigError as error:
            raise Refused(f"the cluster registry is invalid: {error}") from None
        example = app_dir / "clusters.example.json"
        if example.is_file() and json.loads(text) == json.loads(example.read_text()):
            placeholder(f"the cluster registry {shown} is still clusters.example.json: list your clusters")
    for origin in loaded.cors_allowed_origins:
        if RESERVED_HOST.search(urlsplit(origin).hostname or ""):
            placeholder(f"{where}: CORS_ALLOWED_ORIGINS still names the example origin {origin}: "
                        "give your Dashboard frontends' origins (or none, if it is served from the same origin)")
    return loaded.cors_allowed_origins, warnings


ORIGINS_PARAMETER = "CorsAllowedOrigins"
_ORIGIN = r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?"


def origins_parameter(origins: tuple[str, ...]) -> dict:
    return {
        "Type": "String",
        "Default": ",".join(origins),
        "Description": "Comma-separated exact origins of the Dashboard frontends allowed to call from a browser "
                       "(CORS_ALLOWED_ORIGINS; default: the stage's in .chalice/config.json). Empty: same origin only. "
                       "With exactly one, API Gateway's own errors (429, 403, 504) are readable by that frontend too.",
        "AllowedPattern": f"^$|^{_ORIGIN}(,{_ORIGIN})*$",
        "ConstraintDescription": "empty, or exact origins such as https://dashboard.corp.io, comma-separated, no spaces",
    }


def origins_conditions() -> dict:
    origins = {"Ref": ORIGINS_PARAMETER}
    return {
        "HasCorsOrigins": {"Fn::Not": [{"Fn::Equals": [origins, ""]}]},
        # one origin: the list has no comma, so removing the commas changes nothing
        "SingleCorsOrigin": {"Fn::And": [
            {"Condition": "HasCorsOrigins"},
            {"Fn::Equals": [{"Fn::Join": ["", {"Fn::Split": [",", origins]}]}, origins]},
        ]},
    }


def gateway_responses() -> dict:
    """RestAPI's GatewayResponses (SAM), following the origins parameter: see the module's docstring."""
    def only_if(condition: str, value) -> dict:
        return {"Fn::If": [condition, value, {"Ref": "AWS::NoValue"}]}

    headers = {
        "Vary": only_if("HasCorsOrigins", "'Origin'"),
        "Access-Control-Allow-Origin": only_if("SingleCorsOrigin", {"Fn::Sub": "'${%s}'" % ORIGINS_PARAMETER}),
        "Access-Control-Expose-Headers": only_if("SingleCorsOrigin", "'Retry-After'"),
    }
    # API Gateway's own body ({"message": "Too Many Requests"}, ...) stated outright: SAM writes an empty
    # responseTemplates map when none is given
    body = {"application/json": '{"message":$context.error.messageString}'}
    return {kind: {"ResponseParameters": {"Headers": dict(headers)}, "ResponseTemplates": dict(body)}
            for kind in GATEWAY_RESPONSES}


def merge_template(app_dir: Path, stage: str, origins: tuple[str, ...]) -> dict:
    template = json.loads((app_dir / ".chalice" / f"merge-{stage}.json").read_text())
    template.setdefault("Parameters", {})[ORIGINS_PARAMETER] = origins_parameter(origins)
    template.setdefault("Conditions", {}).update(origins_conditions())
    resources = template.setdefault("Resources", {})
    api = resources.setdefault("RestAPI", {}).setdefault("Properties", {})
    api["GatewayResponses"] = gateway_responses()
    function = resources.setdefault(API_FUNCTION, {}).setdefault("Properties", {})
    function.setdefault("Environment", {}).setdefault("Variables", {})["CORS_ALLOWED_ORIGINS"] = {"Ref": ORIGINS_PARAMETER}
    return template


def package(app_dir: Path, stage: str, out: Path, allow_placeholders: bool) -> None:
    origins, warnings = check(app_dir, stage, allow_placeholders)
    snapstart = stage_snapstart(app_dir, stage)
    for warning in warnings:
        print(f"warning: {warning} (packaged anyway: --allow-placeholders)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        merge = Path(scratch) / f"merge-{stage}.json"
        merge.write_text(json.dumps(merge_template(app_dir, stage, origins), indent=2))
        chalice = Path(sys.executable).parent / "chalice"
        env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        done = subprocess.run([str(chalice), "package", "--stage", stage, "--merge-template", str(merge), str(out)],
                              cwd=app_dir, env=env)
    if done.returncode:
        sys.exit(done.returncode)
    sam = out / "sam.json"
    template = json.loads(sam.read_text())
    note = apply_snapstart(template, stage, snapstart)
    if "SnapStart" in template["Resources"][API_FUNCTION]["Properties"]:
        sam.write_text(json.dumps(template, indent=2) + "\n")
    if note:
        print(note, file=sys.stderr)
    print(ship_bytecode(out / "deployment.zip", template, stage), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage")
    parser.add_argument("out", type=Path)
    parser.add_argument("--allow-placeholders", action="store_true",
                        help="package without a registry or with example origins (CI, template checks)")
    parser.add_argument("--app-dir", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        package(args.app_dir.resolve(), args.stage, args.out, args.allow_placeholders)
    except Refused as refusal:
        print(f"refusing to package stage {args.stage}: {str(refusal).rstrip('.')}.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Compose stack, checked without Docker: schema, structure, secrets, documented variables.

Each check is a function returning the problems it finds, so the tests below run it on the real
files (no problems) and on a broken copy (the problem is found): a check that cannot fail is no
check. The full stack runs for real in tests/compose/smoke.sh (pytest -m compose).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import SHARED, needs_shared

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = "compose-spec/compose-spec.json"  # in ../shared: the project must not copy it
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
ENTRYPOINT = ROOT / "worker" / "entrypoint.sh"
GPU_SLOTS = "/var/lib/rnntune/gpu-slots"

# ${VAR}, ${VAR:-default}, ${VAR:?error}; `$${...}` is an escaped literal for the container.
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
ENV_LINE = re.compile(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)=", re.M)
# The whole value is one interpolation of a variable, e.g. ${POSTGRES_PASSWORD:?set it}.
INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:]?[-?][^}]*)?\}$")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]*)@")

Doc = dict[str, Any]


def load(path: Path) -> Doc:
    with path.open(encoding="utf-8") as f:
        doc = yaml.safe_load(f)  # resolves the file's anchors and << merge keys
    assert isinstance(doc, dict), f"{path.name} is not a YAML mapping"
    return doc


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (path, string) in the document, keys included as path segments."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def seconds(duration: str | int) -> float:
    """A Compose duration ('1m30s', '30s', 10) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def env_list(environment: Any) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {k: "" if v is None else str(v) for k, v in (environment or {}).items()}


def default_of(value: str) -> str:
    """The default of a ``${VAR:-default}`` value, or the value itself."""
    m = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", value)
    return m.group(1) if m else value


# -- checks ------------------------------------------------------------------------------------


def schema_problems(doc: Doc) -> list[str]:
    schema = json.loads(needs_shared(SCHEMA_PATH).read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def structure_problems(doc: Doc) -> list[str]:
    problems = []
    services = doc.get("services", {})
    if "version" in doc:
        problems.append("the obsolete `version:` key is present")
    for name in ("db", "init", "worker", "evaluate", "dashboard"):
        if name not in services:
            problems.append(f"service {name!r} is missing")
    if problems:
        return problems

    db = services["db"]
    if not re.fullmatch(r"postgres:(15|17)", default_of(db.get("image", ""))):
        problems.append(f"db image {db.get('image')!r} is not postgres:15 or postgres:17")
    test = db.get("healthcheck", {}).get("test", [])
    if "pg_isready" not in " ".join(test if isinstance(test, list) else [test]):
        problems.append("db has no pg_isready healthcheck")
    if db.get("ports"):
        problems.append("db publishes a port by default")
    if not any(str(v).endswith(":/var/lib/postgresql/data") for v in db.get("volumes", [])):
        problems.append("db keeps its data outside a volume")
    named = set(doc.get("volumes") or {})
    for volume in db.get("volumes", []):
        source = str(volume).split(":", 1)[0]
        if source not in named:
            problems.append(f"db volume {source!r} is not a named volume")

    def depends(service: str, on: str, condition: str) -> None:
        got = services[service].get("depends_on", {})
        if not isinstance(got, dict) or got.get(on, {}).get("condition") != condition:
            problems.append(f"{service} does not depend on {on} with condition {condition}")

    depends("init", "db", "service_healthy")
    for name in ("worker", "evaluate", "dashboard"):
        depends(name, "init", "service_completed_successfully")
        # Also on db directly: `stop` stops a service's dependents first, and init has exited,
        # so without it the database goes down beside the workers' graceful stop.
        depends(name, "db", "service_healthy")

    worker = services["worker"]
    if "container_name" in worker:
        problems.append("worker has a container_name: --scale cannot work")
    if worker.get("ports"):
        problems.append("worker publishes ports: --scale cannot work")
    # A worker exits 0 when the study is done: it must then stay down, not loop.
    if not str(worker.get("restart", "")).startswith("on-failure"):
        problems.append(f"worker restart policy {worker.get('restart')!r} is not on-failure")
    if worker.get("init") is not True:
        problems.append("worker has no init: a SIGTERM during its startup would be ignored")
    if seconds(worker.get("stop_grace_period", "10s")) <= 10:
        problems.append("worker stop_grace_period is not longer than its 10 s graceful stop")
    if "build" not in worker or "worker/Dockerfile" not in str(worker["build"]):
        problems.append("worker is not built from worker/Dockerfile")
    for name in ("init", "worker", "evaluate"):
        command = services[name].get("command")
        word = command[0] if isinstance(command, list) else str(command).split()[0]
        if word != {"init": "init", "worker": "worker", "evaluate": "evaluate"}[name]:
            problems.append(f"{name} does not run `rnntune {name}`")

    def mounts(service: str) -> dict[str, str]:
        out = {}
        for v in services[service].get("volumes", []):
            # ${RNNTUNE_DATA_DIR:-./data}:/data:ro: the interpolation holds a colon of its own.
            parts = re.sub(r"\$\{[^}]*\}", "VAR", str(v)).split(":")
            out[parts[1]] = v
        return out

    for name in ("worker", "evaluate", "dashboard"):
        artifacts = mounts(name).get("/artifacts", "")
        if not artifacts.startswith("artifacts:"):
            problems.append(f"{name} does not mount the shared artifacts volume")
    for name in ("worker", "evaluate"):
        if not mounts(name).get("/data", "").endswith(":ro"):
            problems.append(f"{name} does not mount the user's data read-only at /data")
    reports = mounts("evaluate").get("/reports", "")
    if not reports or reports.startswith(tuple(f"{n}:" for n in named)):
        problems.append("evaluate does not bind-mount a host reports directory")

    # The worker image starts as root so that its entrypoint can give the reports to the owner
    # of ./reports; a fixed `user:` would skip that (and fail for root's quick start).
    for name in ("init", "worker", "evaluate"):
        if "user" in services[name]:
            problems.append(f"{name} sets user: the entrypoint picks the user (README)")

    for port in services["dashboard"].get("ports", []) or ["<none>"]:
        if not str(port).startswith("127.0.0.1:"):
            problems.append(f"dashboard port {port!r} is not published on 127.0.0.1 only")
    for name, service in services.items():
        if name != "dashboard" and service.get("ports"):
            problems.append(f"{name} publishes ports")
    return problems


def secret_problems(doc: Doc, text: str) -> list[str]:
    problems = []
    for path, value in strings(doc):
        key = path.rsplit(".", 1)[-1]
        secret_file = key.upper().endswith("_FILE") and value.startswith("/run/secrets/")
        if "PASSWORD" in key.upper() and not INTERPOLATION.match(value) and not secret_file:
            problems.append(f"{path} is a literal, not ${{...}} from .env")
        for m in URL_PASSWORD.finditer(value):
            if not INTERPOLATION.match(m.group("password")):
                problems.append(f"{path} has a literal password in its URL")
    # Anything the YAML parse could hide (e.g. a commented-out example).
    for m in re.finditer(r"^[\s#-]*[A-Za-z_]*PASSWORD\s*[:=]\s*(\S+)", text, re.M):
        if not m.group(1).strip("\"'").startswith("${"):
            problems.append(f"literal password in the text: {m.group(0)!r}")
    return problems


# Which password file each service may hold, and the variables that name it there.
SECRETS = {"db_password", "worker_db_password", "dashboard_db_password"}
SECRET_USERS = {
    "db": {"POSTGRES_PASSWORD_FILE": "db_password"},
    "init": {
        "RNNTUNE_STORAGE_PASSWORD_FILE": "db_password",
        "RNNTUNE_WORKER_ROLE_PASSWORD_FILE": "worker_db_password",
        "RNNTUNE_DASHBOARD_ROLE_PASSWORD_FILE": "dashboard_db_password",
    },
    "worker": {"RNNTUNE_STORAGE_PASSWORD_FILE": "worker_db_password"},
    "evaluate": {"RNNTUNE_STORAGE_PASSWORD_FILE": "worker_db_password"},
    "dashboard": {"RNNTUNE_STORAGE_PASSWORD_FILE": "dashboard_db_password"},
}


def secret_source_problems(doc: Doc) -> list[str]:
    """Each password is a Docker secret from a file (the only source Compose v1 and v2 both
    take: v1.29 rejects `environment:`), mounted only where it is needed and named by *_FILE."""
    problems = []
    secrets = doc.get("secrets") or {}
    if set(secrets) != SECRETS:
        problems.append(f"secrets {sorted(secrets)} are not {sorted(SECRETS)}")
    for name, spec in secrets.items():
        source = (spec or {}).get("file", "")
        if set(spec or {}) != {"file"} or not source.endswith(f"/{name}"):
            problems.append(
                f"secret {name} is not `file: ${{RNNTUNE_SECRETS_DIR:-./secrets}}/{name}`"
            )
        elif not source.startswith("${RNNTUNE_SECRETS_DIR:-./secrets}/"):
            problems.append(f"secret {name} is not under RNNTUNE_SECRETS_DIR (./secrets)")
    for service, wanted in SECRET_USERS.items():
        spec = doc.get("services", {}).get(service, {})
        held = {s if isinstance(s, str) else s.get("source") for s in spec.get("secrets", [])}
        if held != set(wanted.values()):
            problems.append(
                f"{service} holds secrets {sorted(held)}, not {sorted(wanted.values())}"
            )
        env = env_list(spec.get("environment"))
        for var, secret in wanted.items():
            if env.get(var) != f"/run/secrets/{secret}":
                problems.append(f"{service}: {var} is not /run/secrets/{secret}")
    return problems


def undocumented(texts: list[str], env_example: str) -> list[str]:
    documented = set(ENV_LINE.findall(env_example))
    used = {name for text in texts for name in VAR_REF.findall(text)}
    return sorted(used - documented)


def gpu_problems(doc: Doc) -> list[str]:
    problems = []
    worker = doc.get("services", {}).get("worker", {})
    devices = (
        worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices):
        problems.append("the GPU override reserves no NVIDIA GPU for worker")
    args = worker.get("build", {}).get("args", {})
    if str(args.get("TORCH_EXPECT_CUDA")) != "1" or "TORCH_INDEX_URL" not in args:
        problems.append("the GPU override does not build a CUDA torch (TORCH_* build args)")
    env = env_list(worker.get("environment"))
    if env.get("RNNTUNE_DEVICE") != "cuda":
        problems.append("the GPU override does not set RNNTUNE_DEVICE=cuda")
    # One worker per GPU: slots from RNNTUNE_GPUS, locked on a host-local volume.
    slots = [v for v in worker.get("volumes", []) if str(v).endswith(":" + GPU_SLOTS)]
    if "RNNTUNE_GPUS" not in env or not slots or slots[0].split(":")[0] not in doc["volumes"]:
        problems.append("the GPU override has no per-GPU slots (RNNTUNE_GPUS + gpu-slots volume)")
    return problems


# -- the real files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Doc:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def gpu() -> Doc:
    return load(GPU)


def test_schema_is_there() -> None:
    assert needs_shared(SCHEMA_PATH).is_file(), f"{SHARED / SCHEMA_PATH} is not a file"


@pytest.mark.parametrize("path", [COMPOSE, GPU], ids=lambda p: p.name)
def test_validates_against_the_compose_specification(path: Path) -> None:
    assert schema_problems(load(path)) == []


def test_structure(compose: Doc) -> None:
    assert structure_problems(compose) == []


@pytest.mark.parametrize("path", [COMPOSE, GPU], ids=lambda p: p.name)
def test_no_literal_password(path: Path) -> None:
    assert secret_problems(load(path), path.read_text(encoding="utf-8")) == []


def test_env_example_documents_every_variable() -> None:
    texts = [COMPOSE.read_text(encoding="utf-8"), GPU.read_text(encoding="utf-8")]
    assert undocumented(texts, ENV_EXAMPLE.read_text(encoding="utf-8")) == []


def test_secrets_come_from_files(compose: Doc) -> None:
    assert secret_source_problems(compose) == []


def test_env_example_needs_nothing() -> None:
    """The demo runs without a .env: the passwords are files (secrets/), every setting in
    .env.example is commented out with its default, and nothing is required (`:?`)."""
    active = re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M)
    assert active == []
    assert "PASSWORD=" not in ENV_EXAMPLE.read_text()
    assert re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", COMPOSE.read_text()) == []


def quick_start_secrets_command(text: str) -> str:
    """The README's command that creates the password files (its two lines, joined)."""
    m = re.search(r"(mkdir -p -m 700 secrets && for s in .*?; done)", text, re.S)
    assert m, "no `mkdir -p -m 700 secrets && for s in ...; done` command"
    return " ".join(m.group(1).split())


def test_readme_quick_start_makes_readable_secret_files(tmp_path: Path) -> None:
    """The README's command, run for real: three non-empty files the containers' users (postgres
    999, rnntune 1000 or the reports' owner) can read, in a directory only its owner lists;
    smoke.sh and .env.example give the same command."""
    readme = (ROOT / "README.md").read_text()
    quick_start = readme[readme.index("### Quick start") :]
    command = quick_start_secrets_command(quick_start)
    smoke = (ROOT / "tests" / "compose" / "smoke.sh").read_text()
    assert quick_start_secrets_command(smoke) == command
    example = "\n".join(ln.lstrip("# ") for ln in ENV_EXAMPLE.read_text().splitlines())
    assert quick_start_secrets_command(example) == command
    # As a user whose umask keeps everything private: the command must still give 644 files.
    subprocess.run(["sh", "-c", f"umask 077 && {command}"], cwd=tmp_path, check=True, timeout=60)
    d = tmp_path / "secrets"
    assert d.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in d.iterdir()) == sorted(SECRETS)
    for name in SECRETS:
        f = d / name
        assert f.stat().st_mode & 0o777 == 0o644, name
        assert re.fullmatch(r"[0-9a-f]{48}\n", f.read_text()), name
    assert len({(d / n).read_text() for n in SECRETS}) == 3


def test_secrets_stay_out_of_git_and_images() -> None:
    assert "/secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "secrets/" in (ROOT / ".dockerignore").read_text().splitlines()
    if (ROOT / ".git").exists() and shutil.which("git"):
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "secrets/db_password"], cwd=ROOT, check=False
        )
        assert ignored.returncode == 0, "git would add secrets/db_password"


def test_gpu_override(gpu: Doc) -> None:
    assert gpu_problems(gpu) == []
    assert set(gpu["services"]) <= {"worker", "evaluate"}, "the override only retargets workers"


def test_requirements_pin_every_runtime_dependency() -> None:
    """The images install requirements.txt, then rnntune with --no-deps: it must be complete."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][^\s;]*)", line)
            assert m, f"requirements.txt: {line!r} is not pinned with =="
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower().replace("_", "-") for d in deps}
    assert names - set(pins) == set(), "pyproject dependencies missing from requirements.txt"
    assert pins["torch"] == "2.13.0", "an unpinned torch is a multi-GB CUDA download"


@pytest.mark.parametrize("dockerfile", ["worker/Dockerfile", "dashboard/Dockerfile"])
def test_dockerfile(dockerfile: str) -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / dockerfile).read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    if dockerfile.startswith("worker"):
        # Starts as root so that its entrypoint can fix the mounts; it drops privileges with
        # setpriv before rnntune runs (tested below, and in the compose smoke test).
        assert users == [] and lines[-2:] == ['ENTRYPOINT ["rnntune-entrypoint"]', 'CMD ["worker"]']
        assert "setpriv --reuid" in ENTRYPOINT.read_text()
    else:  # the dashboard needs no root at all
        assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    first_source = next(i for i, ln in enumerate(lines) if ln.startswith("COPY src"))
    installs = [i for i, ln in enumerate(lines) if "pip install" in ln and "--no-deps" not in ln]
    assert installs and max(installs) < first_source, "dependencies go in before the source"
    assert any("pip install --no-deps ." in ln for ln in lines[first_source:])
    if dockerfile.startswith("worker"):
        torch = next(i for i, ln in enumerate(lines) if "TORCH_SPEC" in ln and "RUN" in ln)
        reqs = next(i for i, ln in enumerate(lines) if "-r /tmp/requirements.txt" in ln)
        assert torch < reqs, "torch is installed first, in its own layer"
        assert "ARG TORCH_SPEC=torch==2.13.0" in lines


def test_the_checkout_ships_the_reports_directory() -> None:
    """./reports comes with the clone, so it belongs to whoever cloned: their reports."""
    assert (ROOT / "reports" / ".gitkeep").is_file()
    if (ROOT / ".git").exists() and shutil.which("git"):
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", "reports/.gitkeep"],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        assert tracked.returncode == 0, "reports/.gitkeep is not tracked"


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    rules = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert rules[0] == "*", "an allowlist: everything is excluded unless named"
    assert not any(r.lstrip("!").startswith((".env", ".git", "reports", "data")) for r in rules)


# -- the checks can fail ---------------------------------------------------------------------------

BREAKAGES: dict[str, Callable[[Doc], None]] = {
    "worker container_name": lambda d: d["services"]["worker"].update(container_name="w"),
    "worker ports": lambda d: d["services"]["worker"].update(ports=["9000:9000"]),
    "worker restarts always": lambda d: d["services"]["worker"].update(restart="always"),
    "short grace": lambda d: d["services"]["worker"].update(stop_grace_period="5s"),
    "no healthcheck": lambda d: d["services"]["db"].pop("healthcheck"),
    "db published": lambda d: d["services"]["db"].update(ports=["5432:5432"]),
    "dashboard on all interfaces": lambda d: d["services"]["dashboard"].update(ports=["8080:8080"]),
    "worker races init": lambda d: d["services"]["worker"].update(depends_on=["init"]),
    "db stops beside the workers": lambda d: d["services"]["evaluate"].update(
        depends_on={"init": {"condition": "service_completed_successfully"}}
    ),
    "init races db": lambda d: d["services"]["init"]["depends_on"]["db"].update(
        condition="service_started"
    ),
    "data writable": lambda d: d["services"]["worker"].update(
        volumes=["artifacts:/artifacts", "./data:/data"]
    ),
    "version key": lambda d: d.update(version="3.8"),
    "worker without init": lambda d: d["services"]["worker"].pop("init"),
    "evaluate with a fixed user": lambda d: d["services"]["evaluate"].update(user="1000:1000"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_structure_check_catches(compose: Doc, name: str) -> None:
    broken = copy.deepcopy(compose)
    BREAKAGES[name](broken)
    assert structure_problems(broken)


def test_schema_check_catches(compose: Doc) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["restart_policy"] = "on-failure"  # not a Compose key
    assert schema_problems(broken)


@pytest.mark.parametrize(
    "where",
    ["env", "url"],
)
def test_secret_check_catches(compose: Doc, where: str) -> None:
    broken = copy.deepcopy(compose)
    if where == "env":
        broken["services"]["db"]["environment"]["POSTGRES_PASSWORD"] = "hunter2"
    else:
        broken["services"]["dashboard"]["environment"]["RNNTUNE_STORAGE"] = (
            "postgresql://rnntune:hunter2@db:5432/rnntune"
        )
    assert secret_problems(broken, "") != []
    assert secret_problems({}, "      POSTGRES_PASSWORD: hunter2\n") != []


SECRET_BREAKAGES: dict[str, Callable[[Doc], None]] = {
    # What main had: Compose v1.29 rejects it (secrets.db_password value 'environment' ...).
    "secret from environment": lambda d: d["secrets"].update(
        db_password={"environment": "POSTGRES_PASSWORD"}
    ),
    "secret outside RNNTUNE_SECRETS_DIR": lambda d: d["secrets"].update(
        db_password={"file": "/etc/db_password"}
    ),
    "dashboard holds the owner's password": lambda d: d["services"]["dashboard"].update(
        secrets=["dashboard_db_password", "db_password"]
    ),
    "worker not given its secret": lambda d: d["services"]["worker"].update(secrets=[]),
    "*_FILE names another secret": lambda d: d["services"]["evaluate"]["environment"].update(
        RNNTUNE_STORAGE_PASSWORD_FILE="/run/secrets/db_password"
    ),
    "db password from the environment": lambda d: d["services"]["db"]["environment"].pop(
        "POSTGRES_PASSWORD_FILE"
    ),
}


@pytest.mark.parametrize("name", sorted(SECRET_BREAKAGES))
def test_secret_source_check_catches(compose: Doc, name: str) -> None:
    broken = copy.deepcopy(compose)
    SECRET_BREAKAGES[name](broken)
    assert secret_source_problems(broken)


def test_env_check_catches() -> None:
    assert undocumented(["x: ${RNNTUNE_NOT_DOCUMENTED:-1} $${ESCAPED}"], "A=1\n") == [
        "RNNTUNE_NOT_DOCUMENTED"
    ]


@pytest.mark.parametrize("remove", ["deploy", "volumes"])
def test_gpu_check_catches(gpu: Doc, remove: str) -> None:
    broken = copy.deepcopy(gpu)
    broken["services"]["worker"].pop(remove)
    assert gpu_problems(broken)


# -- worker/entrypoint.sh, run here with a stand-in `rnntune` ------------------------------------
#
# As root (CI, and this machine) the entrypoint really changes ownership and drops privileges, so
# these tests run it for real on directories owned by other uids; as another user the privilege
# drop cannot happen and those tests skip (the non-root path is then what runs).

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: the entrypoint's privilege drop")
RUN_UID, RUN_GID = 1000, 1000  # the image's user (RNNTUNE_UID/GID) in these tests
FAKE_RNNTUNE = r"""#!/bin/sh
echo "rnntune $* uid=$(id -u) gid=$(id -g) groups=$(id -G) gpu=${CUDA_VISIBLE_DEVICES:-none}"
if [ -n "${WRITE:-}" ]; then
    echo x > "$RNNTUNE_OUT/$WRITE"
    mkdir -p "$RNNTUNE_OUT/plots" && echo y > "$RNNTUNE_OUT/plots/a.png"
    echo z > "$RNNTUNE_ARTIFACTS/checkpoint-$(id -u)"
fi
if [ -n "${TRAP:-}" ]; then
    trap 'echo "TERM as $(id -u)"; echo late > "$RNNTUNE_OUT/late"; exit 0' TERM
    echo ready
    while :; do sleep 0.1; done
fi
[ -z "${HOLD:-}" ] || exec sleep "$HOLD"
"""


@pytest.fixture
def ep_dir() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is private to its user)."""
    d = Path(tempfile.mkdtemp(prefix="rnntune-entrypoint-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def entrypoint_env(ep_dir: Path) -> dict[str, str]:
    """A fake rnntune that prints who runs it and what it was given, and writable directories."""
    bin_dir = ep_dir / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "rnntune"
    fake.write_text(FAKE_RNNTUNE)
    fake.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin:/usr/sbin:/sbin",
        "RNNTUNE_UID": str(RUN_UID),
        "RNNTUNE_GID": str(RUN_GID),
        "RNNTUNE_ARTIFACTS": str(ep_dir / "artifacts"),
        "RNNTUNE_OUT": str(ep_dir / "reports"),
        "RNNTUNE_GPU_SLOTS_DIR": str(ep_dir / "slots"),
    }


def run_entrypoint(
    env: dict[str, str], *args: str, as_user: tuple[int, int] | None = None
) -> subprocess.CompletedProcess[str]:
    """The entrypoint as this process's user, or (as root) as a fixed user like runAsUser."""
    prefix = []
    if as_user:
        prefix = ["setpriv", f"--reuid={as_user[0]}", f"--regid={as_user[1]}", "--clear-groups"]
    return subprocess.run(
        [*prefix, "sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30
    )


def owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def test_entrypoint_execs_rnntune(entrypoint_env: dict[str, str]) -> None:
    done = run_entrypoint(entrypoint_env, "evaluate", "--out", "x")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("rnntune evaluate --out x uid=")
    assert done.stdout.endswith(" gpu=none\n")
    assert Path(entrypoint_env["RNNTUNE_OUT"]).is_dir()


@needs_root
def test_entrypoint_runs_nothing_as_root(entrypoint_env: dict[str, str]) -> None:
    """Started as root, every command runs as the image's user: privileges dropped, never 0."""
    for command in ("init", "worker", "status", "evaluate"):
        done = run_entrypoint(entrypoint_env, command)
        assert done.returncode == 0, done.stderr
        assert f"uid={RUN_UID} gid={RUN_GID} " in done.stdout, done.stdout
    # RNNTUNE_UID=0 (the old advice for root) is not obeyed: still the image's user.
    done = run_entrypoint({**entrypoint_env, "RNNTUNE_UID": "0"}, "worker")
    assert done.returncode == 0 and "uid=1000 " in done.stdout, done.stdout + done.stderr
    assert "never runs as root" in done.stderr


@needs_root
def test_entrypoint_refuses_to_run_rnntune_as_root(entrypoint_env: dict[str, str]) -> None:
    """The assertion itself: an image whose own user is root (uid 0) is refused, not obeyed."""
    env = {**entrypoint_env}
    del env["RNNTUNE_UID"], env["RNNTUNE_GID"]
    # No user "rnntune" on this host: the entrypoint falls back to 1000 unless told otherwise,
    # so feed it a passwd lookup that says root, through a stand-in `id`.
    bin_dir = Path(env["PATH"].split(":")[0])
    (bin_dir / "id").write_text(
        '#!/bin/sh\nif [ "${2:-}" = rnntune ]; then echo 0; else exec /usr/bin/id "$@"; fi\n'
    )
    (bin_dir / "id").chmod(0o755)
    done = run_entrypoint(env, "worker")
    assert done.returncode == 70, done.stdout + done.stderr
    assert "refusing to run rnntune as root" in done.stderr and "rnntune worker" not in done.stdout


@needs_root
@pytest.mark.parametrize("who", [(1000, 1000), (4321, 4322)], ids=["uid-1000", "other-uid"])
def test_entrypoint_runs_evaluate_as_the_owner_of_the_reports(
    entrypoint_env: dict[str, str], ep_dir: Path, who: tuple[int, int]
) -> None:
    """`mkdir reports` by any user: evaluate runs as that user, so the files are theirs."""
    reports = ep_dir / "reports"
    reports.mkdir()
    os.chown(reports, *who)
    done = run_entrypoint({**entrypoint_env, "WRITE": "report.json"}, "evaluate")
    assert done.returncode == 0, done.stderr
    # Its own uid and gid, and the image's group for the shared artifact volume.
    groups = " ".join(dict.fromkeys(map(str, (who[1], RUN_GID))))
    assert f"uid={who[0]} gid={who[1]} groups={groups} " in done.stdout, done.stdout
    for f in ("report.json", "plots", "plots/a.png"):
        assert owner(reports / f) == who, f
    # The artifact volume is shared: group of the image's user, group-writable, setgid.
    artifacts = Path(entrypoint_env["RNNTUNE_ARTIFACTS"])
    assert artifacts.stat().st_gid == RUN_GID and artifacts.stat().st_mode & 0o2070 == 0o2070
    assert (artifacts / f"checkpoint-{who[0]}").stat().st_mode & 0o060 == 0o060


@needs_root
@pytest.mark.parametrize("created", ["by-root", "missing"])
def test_entrypoint_lends_a_root_owned_reports_dir_and_takes_it_back(
    entrypoint_env: dict[str, str], ep_dir: Path, created: str
) -> None:
    """Root ran the quick start (or Docker created ./reports): unprivileged run, root's files."""
    reports = ep_dir / "reports"
    reports.mkdir()
    (reports / "old.md").write_text("kept")  # root's own file: lent and given back as it was
    if created == "missing":  # Docker creates a missing bind source as root: the same case
        shutil.rmtree(reports)
        reports.mkdir()
    done = run_entrypoint({**entrypoint_env, "WRITE": "report.json"}, "evaluate")
    assert done.returncode == 0, done.stderr
    assert f"uid={RUN_UID} gid={RUN_GID} " in done.stdout, done.stdout
    kept = ["old.md"] if created == "by-root" else []
    for f in (".", "report.json", "plots", "plots/a.png", *kept):
        assert owner(reports / f) == (0, 0), f


@contextmanager
def evaluate_holding(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """The entrypoint running a fake `evaluate` that waits for SIGTERM; killed if still there."""
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), "evaluate"],
        env={**env, "TRAP": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the finaliser kills all of it
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"rnntune evaluate uid={RUN_UID} "), first
        assert proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


@needs_root
@pytest.mark.timeout(60)
def test_entrypoint_forwards_sigterm_while_it_lends_the_reports(
    entrypoint_env: dict[str, str], ep_dir: Path
) -> None:
    """`docker compose stop` during evaluate: rnntune gets the SIGTERM, exits 0, files to root."""
    reports = ep_dir / "reports"
    (reports / "report_plots").mkdir(parents=True)  # a root run's plots: rewritten, so lent
    (reports / "keep").mkdir()  # anything else of root's there: never lent
    (reports / "keep" / "secret").write_text("root's")
    with evaluate_holding(entrypoint_env) as proc:
        # Lent for the run: the directory and rnntune's plot directory, nothing else.
        assert owner(reports) == owner(reports / "report_plots") == (RUN_UID, RUN_GID)
        assert owner(reports / "keep") == owner(reports / "keep" / "secret") == (0, 0)
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == "TERM as 1000\n"
    for f in (".", "late", "report_plots", "keep", "keep/secret"):
        assert owner(reports / f) == (0, 0), f
    assert not (reports / ".rnntune-lent").exists()


@needs_root
@pytest.mark.timeout(60)
def test_entrypoint_takes_back_the_reports_after_a_killed_run(
    entrypoint_env: dict[str, str], ep_dir: Path
) -> None:
    """SIGKILL (OOM, docker kill) while root's directory is lent: the next start hands it back."""
    reports = ep_dir / "reports"
    reports.mkdir()
    with evaluate_holding(entrypoint_env) as proc:
        (reports / "partial.json").write_text("{}")  # as the unprivileged run would leave it
        os.chown(reports / "partial.json", RUN_UID, RUN_GID)
        os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and rnntune alike
        proc.wait(timeout=30)
    assert owner(reports) == (RUN_UID, RUN_GID) and (reports / ".rnntune-lent").exists()
    done = run_entrypoint({**entrypoint_env, "WRITE": "report.json"}, "evaluate")
    assert done.returncode == 0, done.stderr
    assert f"uid={RUN_UID} gid={RUN_GID} " in done.stdout, done.stdout
    for f in (".", "partial.json", "report.json"):
        assert owner(reports / f) == (0, 0), f
    assert not (reports / ".rnntune-lent").exists()


def test_entrypoint_explains_an_unwritable_reports_dir(
    entrypoint_env: dict[str, str], ep_dir: Path
) -> None:
    """With a fixed non-root user (runAsUser, --user) nothing can be fixed: one clear line."""
    reports = ep_dir / "root-owned"
    reports.mkdir(mode=0o555)
    env = {**entrypoint_env, "RNNTUNE_OUT": str(reports)}
    artifacts = Path(env["RNNTUNE_ARTIFACTS"])
    artifacts.mkdir(mode=0o777)
    artifacts.chmod(0o777)
    if IS_ROOT:
        done = run_entrypoint(env, "evaluate", as_user=(RUN_UID, RUN_GID))
    else:
        if os.access(reports, os.W_OK):
            pytest.skip("this user can write anywhere")
        done = run_entrypoint(env, "evaluate")
    assert done.returncode == 77, done.stdout + done.stderr
    assert "is not writable by uid" in done.stderr and "runAsUser" in done.stderr


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs util-linux flock")
def test_entrypoint_gives_each_worker_its_own_gpu(entrypoint_env: dict[str, str]) -> None:
    env = {**entrypoint_env, "RNNTUNE_GPUS": "2,5", "HOLD": "30"}
    holders = [
        subprocess.Popen(
            ["sh", str(ENTRYPOINT), "worker"], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        assert holders[0].stdout and holders[1].stdout
        lines = sorted([holders[0].stdout.readline(), holders[1].stdout.readline()])
        assert [ln.split()[-1] for ln in lines] == ["gpu=2", "gpu=5"], lines
        # A third worker finds both slots taken: nothing to do, exit 0 (no restart loop).
        third = run_entrypoint(env, "worker")
        assert third.returncode == 0 and third.stdout == ""
        assert "every GPU slot" in third.stderr
        # Other commands take no slot.
        status = run_entrypoint({**env, "HOLD": ""}, "status")
        assert status.stdout.startswith("rnntune status ") and status.stdout.endswith("gpu=none\n")
    finally:
        for p in holders:
            p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()
    # The kernel released the locks with the processes: a new worker gets a GPU again.
    again = run_entrypoint({**env, "HOLD": ""}, "worker")
    assert again.stdout.endswith("gpu=2\n"), again.stdout


@pytest.mark.parametrize("problem", ["directory", "missing", "empty"])
def test_entrypoint_explains_a_missing_secret(
    entrypoint_env: dict[str, str], ep_dir: Path, problem: str
) -> None:
    """A password file missing on the host: Docker mounts an empty directory in its place. One
    clear message with the fix, before rnntune starts, for every *_PASSWORD_FILE it is given."""
    secret = ep_dir / "worker_db_password"
    if problem == "directory":
        secret.mkdir()
    elif problem == "empty":
        secret.write_text("")
    ok = ep_dir / "ok"
    ok.write_text("pw\n")
    ok.chmod(0o644)
    for var in (
        "RNNTUNE_STORAGE_PASSWORD_FILE",
        "RNNTUNE_WORKER_ROLE_PASSWORD_FILE",
        "RNNTUNE_DASHBOARD_ROLE_PASSWORD_FILE",
    ):
        env = {**entrypoint_env, "RNNTUNE_STORAGE_PASSWORD_FILE": str(ok), var: str(secret)}
        done = run_entrypoint(env, "init")
        assert done.returncode == 78, done.stdout + done.stderr
        assert done.stdout == "", "rnntune ran"
        assert f"{var}={secret} " in done.stderr
        want = {"directory": "openssl rand -hex 24", "missing": "does not exist", "empty": "empty"}
        assert want[problem] in done.stderr, done.stderr
    # The file there, readable: rnntune runs.
    done = run_entrypoint({**entrypoint_env, "RNNTUNE_STORAGE_PASSWORD_FILE": str(ok)}, "init")
    assert done.returncode == 0 and done.stdout.startswith("rnntune init "), done.stderr


@needs_root
def test_entrypoint_explains_an_unreadable_secret(
    entrypoint_env: dict[str, str], ep_dir: Path
) -> None:
    """A password file only root can read (made with umask 077, no chmod 644): rnntune runs as
    another user, so it is told, with the fix, instead of a permission error at connect time."""
    secret = ep_dir / "db_password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    done = run_entrypoint({**entrypoint_env, "RNNTUNE_STORAGE_PASSWORD_FILE": str(secret)}, "init")
    assert done.returncode == 78, done.stdout + done.stderr
    assert f"not readable by uid {RUN_UID} " in done.stderr and "chmod 644" in done.stderr

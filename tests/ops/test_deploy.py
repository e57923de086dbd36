"""deploy/: what can be checked without Docker or a cluster (see deploy/README.md for the rest).

Every YAML file parses; the Kubernetes manifests have the expected kinds, and their names,
selectors, ports, probes and security settings refer to each other consistently; the example
config inside the ConfigMap passes the daemon's own validation; what must outlive a pod (the
pause file, the audit trail) is on each pod's own claim; Prometheus's config passes `promtool
check config`; the systemd unit passes `systemd-analyze verify`, is rated by `systemd-analyze
security` and does not restart the daemon's invalid-config exit; stop timeouts cover the
daemon's shutdown budget; no secret is baked in anywhere; the Dockerfile is multi-stage,
non-root, runs tini as PID 1 and checks /healthz.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import yaml
from catalogue import ROOT

from oracled.config import parse_config
from oracled.service import STOP_WORST_CASE_S

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
EXAMPLE_SECRET = K8S / "secret.example.yaml"
API_VERSIONS = {
    "ConfigMap": "v1",
    "Service": "v1",
    "StatefulSet": "apps/v1",
    "Service/headless": "v1",
    "PodDisruptionBudget": "policy/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
}


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object of deploy/kubernetes by kind (one object of each kind, except the
    StatefulSet's headless Service, keyed "Service/headless")."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            key = doc["kind"]
            if key == "Service" and doc["spec"].get("clusterIP") == "None":
                key = "Service/headless"
            assert key not in objects, f"two {key} objects"
            objects[key] = doc
    listed = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", EXAMPLE_SECRET.name}
    assert listed == set(kustomization["resources"]), "a manifest is missing from kustomization"
    return objects


def example_secret() -> dict[str, Any]:
    """The example of the Secret oracled-secrets (created out of band, never applied by the
    kustomization); the file's other Secret, of per-pod signing keys, is the init container's
    (tests/ops/test_pod_signing_keys.py)."""
    secrets = {s["metadata"]["name"]: s for s in yaml.safe_load_all(EXAMPLE_SECRET.read_text())}
    assert set(secrets) == {"oracled-secrets", "oracled-signing-keys"}
    for secret in secrets.values():
        assert (secret["apiVersion"], secret["kind"]) == ("v1", "Secret")
        assert secret["metadata"]["labels"]["app.kubernetes.io/name"] == "oracled"
    return dict(secrets["oracled-secrets"])


def test_every_yaml_file_parses() -> None:
    """A stray tab or indent breaks a deploy at the worst moment; catch it here."""
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"


def test_kubernetes_objects_have_their_kinds_and_api_versions() -> None:
    """StatefulSet, two Services, ConfigMap, PodDisruptionBudget, ServiceMonitor; the Secret's
    example is a v1 Secret too."""
    objects = manifests()
    assert {k: o["apiVersion"] for k, o in objects.items()} == API_VERSIONS
    for obj in [*objects.values(), example_secret()]:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "oracled"


def test_deployment_probes_resources_and_security() -> None:
    """Probes hit /healthz and /readyz on the container's port; non-root, read-only, no caps."""
    objects = manifests()
    spec = objects["StatefulSet"]["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["replicas"] >= 2
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    listen = container["args"][container["args"].index("--listen") + 1]
    assert listen == f"0.0.0.0:{ports['http']}"
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    assert container["resources"]["limits"]["memory"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts.get("tmp") == "/tmp", "a read-only root needs a writable /tmp"
    config_path = container["args"][container["args"].index("--config") + 1]
    assert Path(config_path).parent == Path(mounts["config"])


def test_objects_refer_to_each_other() -> None:
    """Service, PDB and ServiceMonitor select the pods; the pod uses the ConfigMap and Secret."""
    objects = manifests()
    pod_labels = objects["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    container = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert service["metadata"]["name"] == "oracled", "the alerts select job=oracled"
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["minAvailable"] < objects["StatefulSet"]["spec"]["replicas"]
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["endpoints"]] == ["http"] and "http" in service_ports
    assert monitor["endpoints"][0]["path"] == "/metrics"
    volumes = {v["name"]: v for v in objects["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    (env_from,) = container["envFrom"]
    assert env_from["secretRef"]["name"] == example_secret()["metadata"]["name"]


def test_secret_holds_the_admin_token_and_the_config_is_valid() -> None:
    """The Secret has the admin token and no signing key: every pod gets its variables, and
    replicas sharing a key sign conflicting rounds (each pod's own key is the init container's,
    tests/ops/test_pod_signing_keys.py), and the NATS sink's creds; the ConfigMap's file passes
    the daemon's own validation."""
    objects = manifests() | {"Secret": example_secret()}
    assert set(objects["Secret"]["stringData"]) == {"ORACLED_ADMIN_TOKEN", "ORACLED_NATS_CREDS"}
    text = objects["ConfigMap"]["data"]["oracled.toml"]
    cfg = parse_config(tomllib.loads(text), env={})
    assert cfg.api.admin_token_env in objects["Secret"]["stringData"]
    assert cfg.markets


def test_the_secret_applied_as_shipped_leaves_the_admin_endpoints_off() -> None:
    """`kubectl apply -k deploy/kubernetes` applies the Secret as it is in the repository: its
    admin token was a placeholder of 35 characters, accepted, so every such cluster's admin
    endpoints (pause, resume, reload) answered to a token anyone can read here. Now it is empty:
    admin stays off until the operator puts a token of their own. (The kustomization no longer
    applies it at all; the example, applied as it is with `kubectl apply -f`, still holds this.)"""
    objects = manifests() | {"Secret": example_secret()}
    env = {k: str(v) for k, v in objects["Secret"]["stringData"].items()}
    cfg = parse_config(tomllib.loads(objects["ConfigMap"]["data"]["oracled.toml"]), env=env)
    assert cfg.admin_token is None


def test_compose_runs_the_whole_stack_from_files_that_exist() -> None:
    """oracled read-only after its config check, nats, prometheus with the rules, grafana with
    provisioning."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"config-check", "oracled", "nats", "prometheus", "grafana"}
    oracled = services["oracled"]
    assert oracled["read_only"] is True and "/tmp" in oracled["tmpfs"]
    assert (DEPLOY / oracled["build"]["context"] / oracled["build"]["dockerfile"]).is_file()
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{source} does not exist"
                mounts[target] = source
    assert mounts["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    assert mounts["/etc/grafana/provisioning"] == "../grafana/provisioning"
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/oracled.yml").read_text())
    assert mounts[provider["providers"][0]["options"]["path"]] == "../grafana/dashboards"
    grafana_env = services["grafana"]["environment"]
    assert grafana_env["PROMETHEUS_URL"] == "http://prometheus:9090"


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    """The scrape config and the rule files it loads are valid for Prometheus."""
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run scripts/ops-setup.sh (make install-test does)"
    done = subprocess.run(
        [exe, "check", "config", "prometheus.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _unit() -> dict[str, list[str]]:
    """The [Service] section of the unit as key -> values (systemd allows repeated keys)."""
    section, out = "", {}
    for line in (DEPLOY / "systemd" / "oracled.service").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_systemd_unit_is_sandboxed_and_reads_secrets_from_an_environment_file() -> None:
    """No new privileges, private /tmp, read-only system, only IP and Unix sockets."""
    unit = _unit()
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["PrivateTmp"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ProtectHome"] == ["yes"]
    assert set(unit["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["User"] != ["root"]
    assert unit["EnvironmentFile"] == ["/etc/oracled/oracled.env"]
    assert (DEPLOY / "systemd" / "oracled.env.example").is_file()
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def _analyzable_unit(tmp_path: Path) -> tuple[str, Path]:
    """systemd-analyze, and a copy of the shipped unit in `tmp_path` whose daemon path is
    `true` (the daemon is not installed at /opt here, and systemd-analyze wants it to exist)."""
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing (Debian package systemd)"
    text = (DEPLOY / "systemd" / "oracled.service").read_text()
    stand_in = shutil.which("true")
    assert stand_in
    unit = tmp_path / "oracled.service"
    unit.write_text(text.replace("/opt/oracled/bin/oracled", stand_in))
    return exe, unit


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing: every key known, every value parsed.

    verify also insists that the executables exist; the daemon is not installed at /opt here,
    so its path is replaced by `true` in a copy. Nothing else of the unit changes.
    """
    exe, unit = _analyzable_unit(tmp_path)
    done = subprocess.run(
        [exe, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    """At least two stages, a numeric non-root user, HEALTHCHECK on /healthz, listens on all."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines()]
    stages = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(stages) >= 2
    assert any("--from=build" in ln for ln in lines if ln.startswith("COPY"))
    (user,) = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    (health,) = [ln for ln in lines if ln.startswith("HEALTHCHECK ")]
    assert "/healthz" in health
    assert not any(ln.startswith("ADD ") for ln in lines)
    assert '"0.0.0.0:8480"' in text and "EXPOSE 8480" in text
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    copied = [
        path
        for ln in lines
        if ln.startswith("COPY ") and "--from" not in ln
        for path in ln.split()[1:-1]
    ]
    assert len(copied) >= 5
    assert [p for p in copied if f"!{p}" not in ignore and f"!{p}/" not in ignore] == []


def test_every_deployment_gives_the_working_directory_a_writable_place() -> None:
    """The shipped config writes its audit trail to a relative path, so each deployment runs the
    daemon in a writable working directory: the image's WORKDIR (owned by its user, a volume),
    a named volume there in compose and a volume there in Kubernetes (both run the root
    filesystem read-only), and the unit's own state directory under ProtectSystem=strict."""
    shipped = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    assert shipped["audit"]["enabled"] and not Path(shipped["audit"]["path"]).is_absolute()
    text = (DEPLOY / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM ") :].replace("\\\n", " ")
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", runtime, re.MULTILINE)
    assert runtime.index("USER 10001") < runtime.index(f"WORKDIR {workdir}")
    assert re.search(rf"install -d -o 10001 -g 10001 -m 0750 {workdir}\b", runtime)
    assert f'VOLUME ["{workdir}"]' in runtime
    oracled = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["oracled"]
    (data,) = [v.split()[0] for v in oracled["volumes"] if v.split(":")[1] == workdir]
    assert data.count(":") == 1 and not data.startswith(".")  # a named volume, writable
    spec = manifests()["StatefulSet"]["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == workdir]
    assert not mount.get("readOnly", False)
    volumes = pod["volumes"] + [
        {"name": c["metadata"]["name"], "persistentVolumeClaim": c["spec"]}
        for c in spec.get("volumeClaimTemplates", [])
    ]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume
    unit = _unit()
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["WorkingDirectory"] == [f"/var/lib/{unit['StateDirectory'][0]}"] == [workdir]


_QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def _bytes(quantity: str) -> int:
    """A Kubernetes storage quantity ("12Gi", "500M", "1024") in bytes."""
    match = re.fullmatch(r"(\d+)([KMGT]i|[kMG])?", quantity)
    assert match, f"not a storage quantity: {quantity}"
    number, unit = match.groups()
    return int(number) * (_QUANTITY[unit] if unit else 1)


def test_operator_pauses_and_the_audit_trail_outlive_a_rollout_in_kubernetes() -> None:
    """The working directory, where the pause file (oracle.manual_pauses_file) and the audit
    trail land, was an emptyDir: every rollout, eviction or node drain lifted every operator
    pause and lost the trail. Now each replica of a StatefulSet has its own PersistentVolumeClaim
    there (a volumeClaimTemplate, kept when the pod is replaced), big enough for the trail's
    max_bytes; the StatefulSet never runs two pods of one identity, so no two processes share a
    pause file. The example config keeps its pauses in that directory too."""
    objects = manifests()
    assert "Deployment" not in objects
    spec = objects["StatefulSet"]["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    workdir = "/var/lib/oracled"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == workdir]
    assert mount["name"] not in {v["name"] for v in pod["volumes"]}, "a pod volume dies with it"
    (claim,) = [c for c in spec["volumeClaimTemplates"] if c["metadata"]["name"] == mount["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    size = _bytes(claim["spec"]["resources"]["requests"]["storage"])
    example = parse_config(tomllib.loads(objects["ConfigMap"]["data"]["oracled.toml"]), env={})
    shipped = parse_config(tomllib.loads((ROOT / "config" / "default.toml").read_text()), env={})
    for cfg in (example, shipped):
        assert cfg.oracle.manual_pauses_file and cfg.audit.enabled
        for path in (cfg.oracle.manual_pauses_file, cfg.audit.path):
            assert not Path(path).is_absolute() or Path(path).parent == Path(workdir)
        assert size >= cfg.audit.max_bytes * 1.1, "room for the WAL and the pause file"
    # The pods' own DNS names (oracled-0.oracled-pods) for per-pod admin calls, even unready.
    headless = objects["Service/headless"]
    assert spec["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    # Replicas are independent: one that cannot get ready must not hold back the other's start.
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_prometheus_scrapes_each_pod_once() -> None:
    """The ServiceMonitor selects exactly one Service (the one named oracled, whose name is the
    job label the alerts select): also selecting the headless Service would scrape every pod
    twice, under job="oracled-pods", and double every alert."""
    objects = manifests()
    selector = objects["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items()
    selected = [
        o["metadata"]["name"]
        for k, o in objects.items()
        if k.startswith("Service/") or k == "Service"
        if selector <= o["metadata"]["labels"].items()
    ]
    assert selected == ["oracled"]


def test_applying_the_kustomization_never_overwrites_the_operators_secret() -> None:
    """The kustomization applied the placeholder Secret: an operator who had created the real one
    out of band, as the file says, had it overwritten by every `kubectl apply -k` (a config
    change, an image bump), the admin token emptied (admin off) and the signing key replaced by
    a placeholder. Now no Secret is among the applied objects; the pods still require the one
    the example names (not optional: a missing Secret stops the pod instead of starting it
    without the operator's keys)."""
    objects = manifests()
    assert "Secret" not in objects
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert not {"secretGenerator", "generators"} & set(kustomization)
    assert EXAMPLE_SECRET.name not in kustomization["resources"]
    (container,) = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    (env_from,) = container["envFrom"]
    assert env_from["secretRef"]["name"] == example_secret()["metadata"]["name"]
    assert not env_from["secretRef"].get("optional", False)
    assert "kubectl create secret generic oracled-secrets" in EXAMPLE_SECRET.read_text()


def _seconds(duration: str) -> float:
    """A compose or systemd duration ("10s", "1m30s", "90") in seconds."""
    units = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration.replace(" ", ""), duration
    return sum(float(n) * units[u] for n, u in parts)


def test_deployments_give_the_shutdown_budget_and_kubernetes_drains_first() -> None:
    """SIGTERM stops the daemon within STOP_WORST_CASE_S, every part of its stop at its limit
    (the 5 s budget of its tasks and API, then the sinks' and files' closes and the event loop's:
    10.1 s; the deployments waited 10 s, 15 in Kubernetes after a 5 s preStop, the budget's 5 s
    and a 2 s margin, under it): each deployment waits longer before SIGKILL, so the audit trail's
    last batch and the pause file are closed, not cut off. In Kubernetes the pod also waited for
    nothing before its SIGTERM, which closes the listener at once, while the Service and the
    other nodes' proxies still sent it requests for a moment (endpoint removal is asynchronous):
    every rollout refused some connections. Now a preStop hook keeps it serving a few seconds
    first, and the grace period covers both."""
    margin = 2.0  # the interpreter's own exit after the budget
    pod = manifests()["StatefulSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"], "the image's own interpreter, as its HEALTHCHECK"
    sleep = re.fullmatch(r"import time; time\.sleep\((\d+)\)", command[2])
    assert sleep, command
    delay = int(sleep[1])
    assert 3 <= delay <= 10
    assert pod["terminationGracePeriodSeconds"] >= delay + STOP_WORST_CASE_S + margin
    oracled = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["oracled"]
    assert _seconds(oracled["stop_grace_period"]) >= STOP_WORST_CASE_S + margin
    assert oracled.get("stop_signal", "SIGTERM") == "SIGTERM"
    unit = _unit()
    assert unit["KillSignal"] == ["SIGTERM"]
    assert _seconds(unit["TimeoutStopSec"][0]) >= STOP_WORST_CASE_S + margin
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    assert "STOPSIGNAL SIGTERM" in lines


def test_systemd_never_restarts_the_daemon_on_an_invalid_config(tmp_path: Path) -> None:
    """The unit does not restart on the exit code `oracled run` gives an invalid config
    (RestartPreventExitStatus). It checked the config in ExecStartPre first, and systemd applies
    RestartPreventExitStatus to the main process only: an invalid config failed the check,
    never reached the daemon, and Restart=on-failure started it again every RestartSec, forever,
    instead of stopping as deploy/README.md said. The daemon validates its config itself before
    it starts anything, so the unit has no ExecStartPre that could fail outside that rule."""
    config = tmp_path / "oracled.toml"
    config.write_text("[oracle]\nround_interval_ms = -1\n")
    done = subprocess.run(
        [sys.executable, "-m", "oracled.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert "refusing to start" in done.stderr, done.stderr
    unit = _unit()
    assert unit["Restart"] == ["on-failure"]
    assert str(done.returncode) in unit["RestartPreventExitStatus"][0].split()
    assert "ExecStartPre" not in unit and "ExecStartPost" not in unit


def test_the_compose_secrets_file_cannot_be_committed() -> None:
    """The compose stack reads its secrets (the admin token, the signing key) from
    deploy/oracled.env, which deploy/README.md tells the operator to create from the example;
    git did not ignore it, so `git add -A` or `git commit -a` took the token into the history.
    Git itself says so now; the example stays tracked."""
    oracled = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["oracled"]
    (env_file,) = oracled["env_file"]
    path = (DEPLOY / env_file["path"]).relative_to(ROOT)
    git = shutil.which("git")
    assert git

    def ignored(name: str) -> bool:
        done = subprocess.run(
            [git, "check-ignore", "--no-index", "-q", name], cwd=ROOT, timeout=60, check=False
        )
        assert done.returncode in (0, 1), done
        return done.returncode == 0

    assert ignored(str(path))
    assert not ignored("deploy/systemd/oracled.env.example")


def test_every_compose_service_reports_its_health_on_the_port_it_serves() -> None:
    """Only oracled had a health check (its image's); NATS, Prometheus and Grafana had none, so
    `docker compose ps` could not tell a hung one from a working one, `docker compose up --wait`
    did not wait for them, and Grafana started before Prometheus answered. Each now probes its
    own endpoint with the image's own wget, on the port it serves; Grafana waits for a healthy
    Prometheus, while Prometheus waits for no healthy oracled (monitoring must come up to show
    an oracled that does not)."""
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    paths = {"nats": "/healthz", "prometheus": "/-/ready", "grafana": "/api/health"}
    for name, path in paths.items():
        service = services[name]
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "wget"], test  # exec form: no shell needed
        url = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/\S*)", test[-1])
        assert url and url[2] == path, test
        # NATS serves HTTP on its monitoring port only; the others on their one published port.
        served = re.findall(r"--http_port\D+(\d+)", " ".join(service.get("command", [])))
        served = served or [p.rsplit(":", 1)[1] for p in service["ports"]]
        assert [url[1]] == served, (name, url[1], served)
        assert _seconds(service["healthcheck"]["timeout"]) < _seconds(
            service["healthcheck"]["interval"]
        )
    # oracled: the image's HEALTHCHECK, on the port its command listens on.
    oracled = services["oracled"]
    assert "healthcheck" not in oracled or oracled["healthcheck"].get("disable") is not True
    dockerfile = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    (port,) = re.findall(r"HEALTHCHECK .*http://127\.0\.0\.1:(\d+)/healthz", dockerfile)
    listen = oracled["command"][oracled["command"].index("--listen") + 1]
    assert listen.rsplit(":", 1)[1] == port
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["prometheus"]["depends_on"]["oracled"]["condition"] == "service_started"


def test_systemd_rates_the_units_exposure_ok(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the sandbox's exposure at most 1.4 of 10, as shipped
    (what remains is mostly the network the daemon needs and the two settings the unit says it
    cannot use). Any directive dropped or weakened (the system call filter, a Protect*= setting,
    private devices, the empty capability set) raises the score and fails here; a stronger
    sandbox lowers it and passes. `--offline` reads the file alone; the
    daemon's path is replaced by `true`, as for verify."""
    exe, unit = _analyzable_unit(tmp_path)
    done = subprocess.run(
        [exe, "security", "--offline=yes", "--threshold=14", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


def test_the_pod_environment_holds_only_what_the_operator_gave_it() -> None:
    """Kubernetes adds service links to every pod's environment by default: with Services named
    oracled and oracled-pods, ORACLED_PORT, ORACLED_SERVICE_HOST, ORACLED_PODS_PORT_8480_TCP and
    more, in the very namespace of names the daemon reads its secrets from (ORACLED_ADMIN_TOKEN,
    ORACLED_SIGNING_KEY, ORACLED_ETH_RPC_URLS). They are off; the pod gets the Secret, its own
    variables and nothing else, and the daemon finds nothing by Service discovery anyway (it
    reads the environment only for the names its config gives)."""
    objects = manifests()
    pod = objects["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False, "no API credentials either"
    # The names links would take (the Service's name in upper case): inside the daemon's own.
    linked = {
        s["metadata"]["name"].upper().replace("-", "_")
        for k, s in objects.items()
        if k.split("/")[0] == "Service"
    }
    assert all(name.startswith("ORACLED") for name in linked) and len(linked) == 2


_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|RPC_URL|CREDENTIAL", re.IGNORECASE)


def test_no_secret_is_baked_into_the_image_or_the_manifests() -> None:
    """Secrets reach the daemon only at run time, from the environment: the Secret in
    Kubernetes, the environment file under compose and systemd. The image sets no variable or
    build argument with a secret's name and its build context admits no env or key file; no
    manifest or compose service sets one inline (a value there is in the repository and in
    `kubectl get -o yaml` for anyone who can read the object); the configs name the variables,
    never the values."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        word = line.split(maxsplit=1)
        if word and word[0] in ("ENV", "ARG", "LABEL"):
            assert not _SECRET_NAME.search(word[1]), line
    admitted = [
        ln[1:]
        for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.startswith("!")
    ]
    assert not [a for a in admitted if re.search(r"\.env|\.key|secret", a)], admitted
    objects = manifests()
    (container,) = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    for env in container.get("env", []):
        assert "value" not in env or not _SECRET_NAME.search(env["name"]), env
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name, service in compose.items():
        environment = service.get("environment", {})
        assert not [k for k in environment if _SECRET_NAME.search(k)], name
    configs = [
        objects["ConfigMap"]["data"]["oracled.toml"],
        (ROOT / "config/default.toml").read_text(),
    ]
    for config in configs:
        cfg = parse_config(tomllib.loads(config), env={})
        assert cfg.admin_token is None and cfg.api.admin_token_env
        assert not re.search(r"^\s*(admin_token|key|private_key)\s*=", config, re.MULTILINE)


def test_an_unready_oracle_never_blocks_a_node_drain() -> None:
    """The PodDisruptionBudget counts ready pods. When no replica was ready (every venue
    unreachable, a bad config rolled out), the budget of one was never met and, under the
    default policy, no eviction was allowed: every node drain and cluster upgrade hung on pods
    that served nothing. unhealthyPodEvictionPolicy AlwaysAllow lets unready pods go; ready ones
    are still protected down to minAvailable."""
    objects = manifests()
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert 1 <= pdb["minAvailable"] < objects["StatefulSet"]["spec"]["replicas"]


def test_the_image_runs_the_daemon_under_an_init_that_forwards_sigterm() -> None:
    """In a container the entrypoint is PID 1 of its namespace, and the kernel drops every
    signal sent to PID 1 that it has no handler for: the daemon installs its SIGTERM handler on
    its event loop, after ~2 s of imports and start-up, so a `docker stop` or pod deletion in that
    window was ignored and the daemon ran on until SIGKILL. tini is now PID 1 and forwards
    SIGTERM to the daemon (which, not being PID 1, stops at once before its handler exists).
    Kubernetes keeps the entrypoint (the pod sets args, not command), and so does compose
    (command replaces CMD only)."""
    text = (DEPLOY / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM ") :].replace("\\\n", " ")
    assert re.search(r"^RUN .*apt-get install [^&]*\btini\b", runtime, re.MULTILINE)
    assert "rm -rf /var/lib/apt/lists/*" in runtime
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", runtime, re.MULTILINE)
    assert yaml.safe_load(entrypoint) == ["/usr/bin/tini", "--", "oracled"]
    (container,) = manifests()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert "command" not in container and container["args"][0] == "run"
    oracled = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["oracled"]
    assert "entrypoint" not in oracled and oracled["command"][0] == "run"


def test_a_consumer_stays_on_one_replica() -> None:
    """Each replica is an independent oracle with its own round numbers and slightly different
    prices (deploy/README.md, *Several replicas*), and the Service balanced every request anew:
    a consumer polling through it saw the round number jump back and forth between two counts
    and a price move back and forth by the replicas' difference. The Service now keeps a
    client on one pod (ClientIP affinity) for as long as that pod is ready."""
    service = manifests()["Service"]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    timeout = service["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
    assert timeout >= 3600


def test_the_two_replicas_never_share_a_node() -> None:
    """Two replicas are there so that one survives what takes the other down; the spread over
    nodes was only a preference (ScheduleAnyway), so under resource pressure both could land on
    one node and a single node failure or drain left no replica at all. Now a node runs two only
    when no other node can take one (DoNotSchedule by hostname with a skew of 1; a one-node test
    cluster still runs both), and zones are preferred apart (volumes are zonal, so a hard zone
    rule could strand a pod whose claim lives in a full zone)."""
    spec = manifests()["StatefulSet"]["spec"]
    pod = spec["template"]["spec"]
    rules = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    host = rules["kubernetes.io/hostname"]
    assert (host["maxSkew"], host["whenUnsatisfiable"]) == (1, "DoNotSchedule")
    zone = rules["topology.kubernetes.io/zone"]
    assert zone["whenUnsatisfiable"] == "ScheduleAnyway"
    labels = spec["template"]["metadata"]["labels"]
    for rule in rules.values():
        assert rule["labelSelector"]["matchLabels"].items() <= labels.items()


def test_sqlite_sorts_on_the_data_volume_not_the_small_tmp() -> None:
    """SQLite writes a sort too big for memory to a temporary file, in the first writable
    directory of its candidates (/var/tmp, /usr/tmp, /tmp) unless SQLITE_TMPDIR names one. With
    a read-only root that was /tmp, which the pods mount as a 16 MiB memory emptyDir: building
    the round index of `transitions` when a schema-2 audit trail is upgraded failed with
    "database or disk is full" once the trail held 2 million transitions (measured on a 16 MiB
    tmpfs; 1 million fit), and the trail stayed down, retried every 5 s. The image sets
    SQLITE_TMPDIR to its working directory, the volume (the pods' data claim), which Kubernetes
    does not override."""
    text = (DEPLOY / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM ") :].replace("\\\n", " ")
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", runtime, re.MULTILINE)
    (env,) = [ln for ln in runtime.splitlines() if ln.startswith("ENV ")]
    assert f"SQLITE_TMPDIR={workdir}" in env.split()
    pod = manifests()["StatefulSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "SQLITE_TMPDIR" not in {e["name"] for e in container.get("env", [])}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[workdir] not in {v["name"] for v in pod["volumes"]}, "the claim, not a pod volume"
    (tmp,) = [v for v in pod["volumes"] if v["name"] == mounts["/tmp"]]
    assert tmp["emptyDir"]["medium"] == "Memory"


def _build_stage_context(dest: Path) -> Path:
    """What the Dockerfile's build stage has in its WORKDIR when it installs the package: its
    COPY instructions carried out from the repository into `dest` (sources must be admitted by
    the ignore file; `__pycache__` is not)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    build = stages[1]
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", build, re.MULTILINE)
    root = dest / workdir.lstrip("/")
    root.mkdir(parents=True)
    admitted = [
        ln[1:].rstrip("/")
        for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.startswith("!")
    ]
    ignore = shutil.ignore_patterns("__pycache__")
    for line in build.splitlines():
        if not line.startswith("COPY ") or "--from" in line:
            continue
        *sources, target = line.split()[1:]
        for source in sources:
            assert source.rstrip("/") in admitted, f"{source} is not in the build context"
            into = root / target
            if target.endswith("/") or len(sources) > 1:
                into = into / Path(source).name
            into.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, into, ignore=ignore)
            else:
                shutil.copyfile(ROOT / source, into)
    return root


def test_the_images_build_stage_has_what_the_package_build_needs(tmp_path: Path) -> None:
    """The build stage copied pyproject.toml, constraints.txt, README.md and the package, then
    ran `pip install .`; since the wheel carries the shipped config (pyproject's force-include
    of config/default.toml, for an installed `oracled demo`), that install failed with
    "Forced include not found: /src/config/default.toml": `docker build` could not build the
    image at all. Found by building a wheel from exactly what the build stage copies, as here
    (no Docker daemon needed): the build now succeeds and the wheel holds the shipped config."""
    src = _build_stage_context(tmp_path / "context")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    done = subprocess.run(
        [*build, "-w", str(tmp_path / "wheels"), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("oracled-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("oracled/default.toml") == (ROOT / "config/default.toml").read_bytes()
        assert "oracled/api/openapi.json" in archive.namelist()

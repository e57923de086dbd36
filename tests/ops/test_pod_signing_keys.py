"""deploy/kubernetes: every pod signs with its own key, chosen by its pod name; the NATS
sink's client key for mutual TLS reaches the daemon the same way.

Replicas sharing a key sign conflicting rounds for the same times and clients refuse them as
equivocation (docs/publishing.md), so the StatefulSet's init container copies the pod's own key
(the Secret key named after the pod) from the Secret volume, whose files the daemon refuses
(root's and group-readable through fsGroup), to a memory volume as a file of the pod's user
with mode 0400. No cluster here: the manifests are rendered with `kubectl kustomize`, and the
init container's script runs for real, as the pod's user and groups, against a directory laid
out as the kubelet lays out a Secret volume; the daemon then starts on the file it wrote (and
its NATS sink loads the TLS files it copied).
"""

from __future__ import annotations

import codecs
import contextlib
import datetime
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from catalogue import ROOT
from children import stop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemon import free_port, sim_config

from oracled.cli import EXIT_CONFIG, EXIT_OK, _parser, main
from oracled.config import ConfigError, parse_config
from oracled.publish.nats_auth import load_nats_auth
from oracled.publish.signer import SigningKey, load_signing_key

K8S = ROOT / "deploy" / "kubernetes"
RUN = [sys.executable, "-m", "oracled.cli", "run"]
KEYS = {
    "oracled-0": "0x" + "11" * 32,
    "oracled-1": "0x" + "22" * 32,
}


def rendered() -> dict[str, dict[str, Any]]:
    """`kubectl kustomize deploy/kubernetes` (what `kubectl apply -k` applies), by kind."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: run scripts/ops-setup.sh (make install-test does)"
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    )
    objects: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc["kind"] in ("StatefulSet", "ConfigMap"):
            objects[doc["kind"]] = doc
    return objects


def signing_keys_secret() -> dict[str, Any]:
    """The example of the Secret of per-pod keys (secret.example.yaml; applied by no one)."""
    docs = list(yaml.safe_load_all((K8S / "secret.example.yaml").read_text()))
    (secret,) = [d for d in docs if d["metadata"]["name"] == "oracled-signing-keys"]
    return dict(secret)


def _uncommented(configmap: dict[str, Any], table: str = "signing") -> str:
    """The ConfigMap's config with its commented `[table]` uncommented, as the operator turns
    signing (or the NATS sink) on (deploy/README.md)."""
    text = configmap["data"]["oracled.toml"]
    block = re.search(rf"^# \[{table}\]\n(?:# .*\n)+", text, re.MULTILINE)
    assert block, f"the ConfigMap lost its commented [{table}] table"
    uncommented = "".join(line[2:] + "\n" for line in block[0].splitlines())
    return text.replace(block[0], uncommented)


def _init(statefulset: dict[str, Any], name: str = "signing-key") -> dict[str, Any]:
    """The pod's init container `name`: signing-key copies the keys, config-check follows."""
    inits = statefulset["spec"]["template"]["spec"]["initContainers"]
    (init,) = [c for c in inits if c["name"] == name]
    return dict(init)


def test_each_pod_copies_its_own_key_to_a_file_the_daemon_accepts() -> None:
    """The pods of one StatefulSet share their Secret and ConfigMap, and the manifests gave the
    signing key through the Secret's environment: every replica signed with one key, whose
    rounds clients refuse as equivocation. Now an init container, of the daemon's image, reads
    the key named after its pod (POD_NAME from metadata.name) from the Secret of per-pod keys,
    mounted there only, and writes it to a memory volume that the daemon's container mounts
    read-only, at the path the ConfigMap's (commented) signing table names. The Secret is
    optional, so that pods start with signing off, as shipped; it holds a key for every pod."""
    objects = rendered()
    statefulset = objects["StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    init = _init(statefulset)
    assert init["image"] == container["image"]
    assert init["command"] == ["python", "-c"]
    script, keys_dir, dest, nats_dir, nats_dest = init["args"]
    assert "POD_NAME" in script
    (env,) = init["env"]
    assert env == {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert init["securityContext"] == container["securityContext"]
    assert init["resources"]["limits"]["memory"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    keys = volumes[init_mounts[keys_dir]["name"]]
    assert init_mounts[keys_dir]["readOnly"] is True
    secret = signing_keys_secret()
    assert keys["secret"]["secretName"] == secret["metadata"]["name"]
    assert keys["secret"]["optional"] is True, "signing off: pods start without the Secret"
    assert keys["secret"]["defaultMode"] == 0o400
    copy = init_mounts[str(Path(dest).parent)]
    assert not copy.get("readOnly", False)
    assert volumes[copy["name"]]["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert keys["name"] not in mounts, "the daemon never sees another pod's key"
    assert mounts[copy["name"]]["mountPath"] == str(Path(dest).parent)
    assert mounts[copy["name"]]["readOnly"] is True
    # Signing is off as shipped; the table the operator uncomments names the copy.
    shipped = parse_config(tomllib.loads(objects["ConfigMap"]["data"]["oracled.toml"]), env={})
    assert not shipped.signing.enabled
    cfg = parse_config(tomllib.loads(_uncommented(objects["ConfigMap"])), env={})
    assert cfg.signing.enabled and cfg.signing.deployment
    assert (cfg.signing.key_file, cfg.signing.key_env) == (dest, None)
    # A key for every pod, each under its pod's name (the StatefulSet's name and ordinal).
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    assert set(secret["stringData"]) == {f"{name}-{i}" for i in range(replicas)}
    assert not init.get("envFrom"), "no environment of the shared Secret in the init container"
    # The NATS client's TLS files: an optional Secret, mounted in the init container only, copied
    # next to the signing key, where the ConfigMap's commented [nats] table names them.
    nats = volumes[init_mounts[nats_dir]["name"]]
    assert init_mounts[nats_dir]["readOnly"] is True
    assert nats["secret"]["optional"] is True and nats["secret"]["defaultMode"] == 0o400
    assert nats["name"] not in mounts, "the daemon reads the copies, never the Secret's files"
    assert not shipped.nats.enabled
    tls = parse_config(tomllib.loads(_uncommented(objects["ConfigMap"], "nats")), env={}).nats
    assert tls.enabled and tls.tls_handshake_first
    assert (tls.tls_key_file, tls.tls_cert_file, tls.tls_ca_file) == (
        nats_dest + ".key",
        nats_dest + ".crt",
        nats_dest + "-ca.crt",
    )
    assert Path(nats_dest).parent == Path(dest).parent


@pytest.fixture
def pod_dir() -> Iterator[Path]:
    """A directory the pod's user can reach (pytest's own is its owner's only)."""
    path = Path(tempfile.mkdtemp(prefix="oracled-pod-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _ids(statefulset: dict[str, Any]) -> tuple[int, int, int]:
    """(uid, gid, fsGroup) of the pod; the test's own when it cannot switch users."""
    context = statefulset["spec"]["template"]["spec"]["securityContext"]
    if os.geteuid() != 0:
        return os.getuid(), os.getgid(), os.getgid()
    return context["runAsUser"], context["runAsGroup"], context["fsGroup"]


def _kubelet_secret_volume(root: Path, keys: dict[str, str], fs_group: int) -> Path:
    """A Secret volume as the kubelet writes one, defaultMode 0400 and fsGroup set: the files
    in a timestamped directory that `..data` points to, a link per key to `..data/<key>`, all
    root's (here: the test's), group fs_group, the files made 0440 and the directories setgid
    by the kubelet's ownership change."""
    root.mkdir()
    data = root / "..2026_11_26_22_00_00.123456789"
    data.mkdir()
    for name, value in keys.items():
        (data / name).write_text(value)
        (root / name).symlink_to(f"..data/{name}")
    (root / "..data").symlink_to(data.name)
    for path in (data, root, *(data / name for name in keys)):
        os.chown(path, os.getuid(), fs_group)
        path.chmod(0o2755 if path.is_dir() else 0o440)
    return root


def _kubelet_empty_dir(path: Path, fs_group: int) -> Path:
    """An emptyDir as the kubelet creates one with fsGroup: 0777, group fs_group, setgid."""
    path.mkdir()
    os.chown(path, os.getuid(), fs_group)
    path.chmod(0o2777)
    return path


def _as_pod_user(statefulset: dict[str, Any], work: Callable[[], str]) -> tuple[int, str]:
    """Run `work` in a forked child as the pod's user, group and fsGroup (when the test runs as
    root: the interpreter's own path may be closed to that user, so the child runs the code
    in-process, no new program, and can import nothing new); (exit status, what it returned or
    raised)."""
    uid, gid, fs_group = _ids(statefulset)
    codecs.lookup("ascii")  # the key loader's codec: the child may not import it any more
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's report is asserted by the parent
        os.close(read)
        status, out = 0, ""
        try:
            if os.geteuid() == 0:
                os.setgroups([fs_group])
                os.setgid(gid)
                os.setuid(uid)
            os.umask(0o022)
            out = work()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            status, out = 1, repr(exc)
        os.write(write, out.encode())
        os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read().decode()
    _, waited = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(waited), out


def _run_init(
    statefulset: dict[str, Any],
    pod: str,
    keys_dir: Path,
    copy_dir: Path,
    nats_dir: Path | None = None,
) -> tuple[int, str]:
    """The init container's script, as the pod's user and groups with POD_NAME set, its mount
    paths mapped to the directories given (no NATS Secret: its optional volume is empty):
    (exit status, what it printed)."""
    script, _, dest, _, nats_dest = _init(statefulset)["args"]
    if nats_dir is None:
        nats_dir = copy_dir.parent / "no-nats-secret"

    def init() -> str:
        sys.argv = [
            "-c",
            str(keys_dir),
            str(copy_dir / Path(dest).name),
            str(nats_dir),
            str(copy_dir / Path(nats_dest).name),
        ]
        os.environ["POD_NAME"] = pod
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(script, {"__name__": "__main__"})
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
        return printed.getvalue()

    return _as_pod_user(statefulset, init)


def _start(workdir: Path, key_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`oracled run` signing with key_file (venues unreachable: the key is read at start-up
    whatever they do)."""
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    config = sim_config([(f"ws://{dead}/ws", f"http://{dead}")] * 3)
    config += f'\n[signing]\nenabled = true\ndeployment = "k8s-test"\nkey_file = "{key_file}"\n'
    config += 'lease_file = "oracled-signing-lease.json"\n'  # in workdir, as on the pod's claim
    (workdir / "oracled.toml").write_text(config)
    with (workdir / "oracled.log").open("wb") as log:
        proc = subprocess.Popen(
            [*RUN, "--config", "oracled.toml", "--listen", f"127.0.0.1:{port}"],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, port


def _info(proc: subprocess.Popen[bytes], port: int, workdir: Path) -> dict[str, Any]:
    """GET /v1/info once the daemon answers (or its log, if it exits first)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((workdir / "oracled.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=2) as resp:
                return dict(orjson.loads(resp.read()))
        except OSError:
            time.sleep(0.1)
    raise AssertionError("no /v1/info within 30 s")


def test_the_init_script_gives_the_daemon_its_pods_key_as_a_file_it_accepts(
    pod_dir: Path, tmp_path: Path
) -> None:
    """The key straight from the Secret volume (root's, 0440 through fsGroup) is refused by the
    daemon, which is why the manifests signed from the environment, with one key for all pods.
    The init container's script, run as the pod's user and groups against a Secret volume laid
    out as the kubelet lays it out, copies oracled-1's key, and only it, to a file of that user
    with mode 0400, which the daemon's key loader accepts as that user; `oracled run` on it
    serves oracled-1's address as its signer."""
    statefulset = rendered()["StatefulSet"]
    uid, _, fs_group = _ids(statefulset)
    keys = _kubelet_secret_volume(pod_dir / "keys", KEYS, fs_group)
    copy_dir = _kubelet_empty_dir(pod_dir / "copy", fs_group)

    proc, _ = _start(tmp_path, keys / "oracled-1")
    try:
        assert proc.wait(timeout=60) != 0
    finally:  # a daemon that took the key would run on
        stop(proc)
    assert "accessible by group or others (mode 440)" in (tmp_path / "oracled.log").read_text()

    status, printed = _run_init(statefulset, "oracled-1", keys, copy_dir)
    assert status == 0, printed
    (copied,) = copy_dir.iterdir()
    info = copied.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o400, uid)
    assert copied.read_text() == KEYS["oracled-1"]
    status, address = _as_pod_user(statefulset, lambda: load_signing_key(str(copied), None).address)
    assert (status, address) == (0, SigningKey.from_hex(KEYS["oracled-1"]).address)

    proc, port = _start(tmp_path, copied)
    try:
        served = _info(proc, port, tmp_path)
        proc.terminate()
        proc.wait(timeout=30)
    finally:
        stop(proc)
    assert served["signer"] == address != SigningKey.from_hex(KEYS["oracled-0"]).address
    assert served["deployment"] == "k8s-test"


def test_the_init_script_on_a_restarted_pod_and_a_pod_without_a_key(pod_dir: Path) -> None:
    """A pod re-runs its init container with its memory volume kept (a new sandbox): the copy
    there is 0400, which a plain overwrite cannot open; it is replaced, and by the Secret's
    current key (a rotation). A pod whose key is not in the Secret, or with no Secret at all
    (optional: the kubelet mounts an empty directory), gets no file and starts its container
    (signing off); a key removed from the Secret is not kept from an earlier copy."""
    statefulset = rendered()["StatefulSet"]
    _, _, fs_group = _ids(statefulset)
    copy_dir = _kubelet_empty_dir(pod_dir / "copy", fs_group)
    first = _kubelet_secret_volume(pod_dir / "first", KEYS, fs_group)
    assert _run_init(statefulset, "oracled-0", first, copy_dir)[0] == 0
    rotated = {"oracled-0": "0x" + "33" * 32, "oracled-1": KEYS["oracled-1"]}
    second = _kubelet_secret_volume(pod_dir / "second", rotated, fs_group)
    status, printed = _run_init(statefulset, "oracled-0", second, copy_dir)
    assert status == 0, printed
    (copied,) = copy_dir.iterdir()
    assert copied.read_text() == rotated["oracled-0"]
    assert stat.S_IMODE(copied.stat().st_mode) == 0o400

    only_one = {"oracled-1": KEYS["oracled-1"]}
    without = _kubelet_secret_volume(pod_dir / "without", only_one, fs_group)
    status, printed = _run_init(statefulset, "oracled-0", without, copy_dir)
    assert status == 0, printed
    assert "no key oracled-0" in printed
    assert list(copy_dir.iterdir()) == [], "a key no longer given was kept"

    empty = _kubelet_secret_volume(pod_dir / "empty", {}, fs_group)
    assert _run_init(statefulset, "oracled-2", empty, copy_dir)[0] == 0
    assert list(copy_dir.iterdir()) == []


def test_a_pod_with_an_unusable_config_stops_in_its_init_container(
    pod_dir: Path, tmp_path: Path
) -> None:
    """A pod whose config the daemon refuses (exit 2) was restarted as a CrashLoopBackOff of the
    daemon's container, forever. Signing on and no key for this pod in the Secret is such a
    config: the copy step gives the pod no file, and the daemon refuses a key_file it cannot
    read. Now a second init container, after the copy, runs `oracled check-config --as-daemon`
    on the daemon's config with the daemon's environment and mounts (read-only): run here as the
    pod's user on the copy step's output, it passes the pod that has its key and refuses, with
    exit 2 and the key named, the pod that has none (the pod then shows Init:Error and the
    daemon never starts), and a pause file the daemon would refuse."""
    objects = rendered()
    statefulset = objects["StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert [c["name"] for c in pod["initContainers"]] == ["signing-key", "config-check"]
    check = _init(statefulset, "config-check")
    assert check["image"] == container["image"]
    assert "command" not in check, "the image's entrypoint: tini, then oracled"
    config_path = container["args"][container["args"].index("--config") + 1]
    assert check["args"] == ["check-config", "--as-daemon", config_path]
    assert check["envFrom"] == container["envFrom"]
    assert check["securityContext"] == container["securityContext"]
    assert check["resources"]["limits"]["memory"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    checked = {m["name"]: m for m in check["volumeMounts"]}
    assert set(checked) == set(mounts) - {"tmp"}, "every file the daemon reads at start"
    for name, mount in checked.items():
        assert mount["mountPath"] == mounts[name]["mountPath"] and mount["readOnly"] is True

    # What the command imports, imported before the child drops to the pod's user.
    _parser()
    codecs.lookup("utf-8-sig")  # the config file's codec
    uid, _, fs_group = _ids(statefulset)
    keys = _kubelet_secret_volume(pod_dir / "keys", {"oracled-0": KEYS["oracled-0"]}, fs_group)
    copy_dir = _kubelet_empty_dir(pod_dir / "copy", fs_group)
    data = _kubelet_empty_dir(pod_dir / "data", fs_group)
    dest = _init(statefulset)["args"][2]
    copied_key = copy_dir / Path(dest).name
    config = pod_dir / Path(config_path).name
    config.write_text(_uncommented(objects["ConfigMap"]).replace(dest, str(copied_key)))

    def check_config() -> str:
        """The init container's command in the pod's working directory: exit code, output."""
        os.chdir(data)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main([*check["args"][:-1], str(config)])
        return f"{code}\n{out.getvalue()}"

    assert _run_init(statefulset, "oracled-0", keys, copy_dir)[0] == 0
    status, passed = _as_pod_user(statefulset, check_config)
    assert (status, passed.split("\n")[0]) == (0, str(EXIT_OK)), passed
    assert f"{config}: ok" in passed

    assert _run_init(statefulset, "oracled-1", keys, copy_dir)[0] == 0
    assert not copied_key.exists()
    status, refused = _as_pod_user(statefulset, check_config)
    assert (status, refused.split("\n")[0]) == (0, str(EXIT_CONFIG)), refused
    assert f"  signing.key_file: cannot read {copied_key} (No such file" in refused
    proc, _ = _start(tmp_path, copied_key)  # what the daemon's container did, restarted forever
    assert proc.wait(timeout=60) == EXIT_CONFIG
    assert f"signing.key_file: cannot read {copied_key}" in (tmp_path / "oracled.log").read_text()

    assert _run_init(statefulset, "oracled-0", keys, copy_dir)[0] == 0
    pauses = data / "oracled-manual-pauses.json"
    pauses.write_text("{")
    os.chown(pauses, uid, fs_group)
    status, refused = _as_pod_user(statefulset, check_config)
    assert (status, refused.split("\n")[0]) == (0, str(EXIT_CONFIG)), refused
    assert f"  oracle.manual_pauses_file: {pauses.name} is not a pause file" in refused


def _client_tls() -> dict[str, str]:
    """A CA and a client certificate it signed, with the client's key: a Secret's `ca.crt`,
    `tls.crt` and `tls.key`, as PEM text."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(name: str, key: Any, issuer: str, signer: Any, ca: bool) -> str:
        built = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )
        return built.public_bytes(serialization.Encoding.PEM).decode()

    ca_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    key_pem = client_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "ca.crt": cert("test CA", ca_key, "test CA", ca_key, True),
        "tls.crt": cert("oracled", client_key, "test CA", ca_key, False),
        "tls.key": key_pem,
    }


def test_the_init_script_gives_the_nats_sink_its_client_key_as_a_file_it_accepts(
    pod_dir: Path,
) -> None:
    """A `[nats] tls_key_file` on the Secret volume (root's, 0440 through fsGroup) is refused by
    the sink, so mutual TLS to NATS needed a copy step. The init container's script copies the
    Secret oracled-nats-client's tls.key, tls.crt and ca.crt to the memory volume as files of the
    pod's user with mode 0400, where the ConfigMap's commented [nats] table names them, and the
    sink's TLS loader accepts them as that user. A pod re-run without the Secret keeps none."""
    objects = rendered()
    statefulset = objects["StatefulSet"]
    uid, _, fs_group = _ids(statefulset)
    files = _client_tls()
    nats_dir = _kubelet_secret_volume(pod_dir / "nats", files, fs_group)
    keys = _kubelet_secret_volume(pod_dir / "keys", KEYS, fs_group)
    copy_dir = _kubelet_empty_dir(pod_dir / "copy", fs_group)
    nats = parse_config(tomllib.loads(_uncommented(objects["ConfigMap"], "nats")), env={}).nats

    def load(folder: Path, names: dict[str, str]) -> str:
        """The sink's TLS files at `folder` (by the name each has there), loaded as the pod."""
        paths = {k: str(folder / names[Path(v).name]) for k, v in _tls_keys(nats).items()}
        cfg = nats.model_copy(update=paths)
        try:
            return repr(sorted(load_nats_auth(cfg, env={}).tls or {}))
        except ConfigError as exc:
            return str(exc)

    in_secret = {"nats-client.key": "tls.key", "nats-client.crt": "tls.crt"}
    in_secret["nats-client-ca.crt"] = "ca.crt"
    status, refused = _as_pod_user(statefulset, lambda: load(nats_dir, in_secret))
    assert status == 0, refused
    assert "tls_key_file" in refused and "accessible by group or others (mode 440)" in refused

    status, printed = _run_init(statefulset, "oracled-0", keys, copy_dir, nats_dir)
    assert status == 0, printed
    copied = {p.name: p for p in copy_dir.iterdir()}
    assert set(copied) == {
        "signing.key",
        "nats-client.key",
        "nats-client.crt",
        "nats-client-ca.crt",
    }
    for name, path in copied.items():
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o400, uid), name
    assert copied["nats-client.key"].read_text() == files["tls.key"]
    assert copied["nats-client-ca.crt"].read_text() == files["ca.crt"]
    same = {name: name for name in copied}
    status, loaded = _as_pod_user(statefulset, lambda: load(copy_dir, same))
    assert (status, loaded) == (0, "['ca', 'cert']")

    status, printed = _run_init(statefulset, "oracled-0", keys, copy_dir)
    assert status == 0, printed
    assert "no tls.key in the Secret oracled-nats-client" in printed
    assert [p.name for p in copy_dir.iterdir()] == ["signing.key"], "a NATS key was kept"


def _tls_keys(nats: Any) -> dict[str, str]:
    """The [nats] table's TLS file settings that are set: key -> path."""
    keys = ("tls_key_file", "tls_cert_file", "tls_ca_file")
    return {k: getattr(nats, k) for k in keys if getattr(nats, k) is not None}

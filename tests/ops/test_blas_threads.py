"""The deployments run numpy's BLAS on one thread: the daemon computes no matrix products.

numpy's OpenBLAS starts a worker thread per CPU (but one) when numpy is imported, and the
daemon's numpy is sorting, medians and element-wise arithmetic, none of which uses BLAS: on a
64-core node every pod carried 63 idle threads. OpenBLAS sizes its pool from the CPUs the
process may run on, so a daemon pinned to one CPU starts none; the deployments' environment
must leave a daemon on every CPU with as many threads as that one.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from catalogue import ROOT
from children import stop
from daemon import free_port, sim_config

DEPLOY = ROOT / "deploy"
RUN = (sys.executable, "-m", "oracled.cli", "run")
BLAS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GOTO_NUM_THREADS")


def deployment_environments() -> dict[str, dict[str, str]]:
    """The BLAS variables each deployment sets: the image's ENV, compose's environment, the
    unit's Environment= lines."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text[text.rindex("\nFROM ") :]
    (env_line,) = [ln for ln in runtime.splitlines() if ln.startswith("ENV ")]
    image = dict(item.split("=", 1) for item in env_line.split()[1:])
    oracled = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["oracled"]
    compose = {k: str(v) for k, v in oracled.get("environment", {}).items()}
    unit: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / "oracled.service").read_text().splitlines():
        if line.startswith("Environment="):
            unit |= dict(item.split("=", 1) for item in line.removeprefix("Environment=").split())
    return {
        name: {k: v for k, v in env.items() if k in BLAS}
        for name, env in (("image", image), ("compose", compose), ("unit", unit))
    }


def _threads_of_a_running_daemon(tmp_path: Path, env: dict[str, str], pin: bool) -> int:
    """The threads of `oracled run` (venues unreachable) once it serves /v1/info and a second
    more, pinned to one CPU or not."""
    dead = f"127.0.0.1:{free_port()}"
    config = tmp_path / "oracled.toml"
    config.write_text(sim_config([(f"ws://{dead}/ws", f"http://{dead}")] * 3))
    port = free_port()
    taskset = shutil.which("taskset")
    assert taskset, "taskset is missing (Debian package util-linux)"
    pinned = [taskset, "-c", str(min(os.sched_getaffinity(0)))] if pin else []
    base = {k: v for k, v in os.environ.items() if k not in BLAS}
    proc = subprocess.Popen(
        [*pinned, *RUN, "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env=base | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the daemon did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0)
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        proc.terminate()
        proc.wait(timeout=30)
        return threads
    finally:
        stop(proc)


def _contracting_einsums(source: str) -> list[int]:
    """The lines of `source` that call `np.einsum` with two or more operands or with
    `optimize`: only a contraction of several operands can reach BLAS (numpy hands it to
    tensordot); one operand (`np.einsum("ij->i", a)`, a row sum) is a loop of numpy's own."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) == "np.einsum"
        and (len(node.args) > 2 or any(k.arg == "optimize" for k in node.keywords))
    ]


def test_the_einsum_check_tells_a_contraction_from_a_row_sum() -> None:
    """The check below is not blind: it finds a contraction and lets a row sum pass."""
    assert _contracting_einsums('np.einsum("ij,jk->ik", a, b)') == [1]
    assert _contracting_einsums('x = 1\nnp.einsum("ij->i", a, optimize=True)') == [2]
    assert _contracting_einsums('np.einsum("ij->i", a.view(np.uint8))') == []


def test_the_daemon_computes_no_matrix_product() -> None:
    """What makes BLAS threads worth having is absent: no module of the daemon calls numpy's
    matrix products, linear algebra or anything else OpenBLAS threads (one thread costs it
    nothing). `np.einsum` of one operand is a reduction (`aggregate.robust.row_counts`), never
    BLAS; one of several operands is looked for by `_contracting_einsums`."""
    blas_calls = re.compile(
        r"\bnp\.(dot|vdot|inner|outer|matmul|tensordot|linalg|cov|corrcoef|polyfit)\b"
        r"|numpy\.linalg|\w @ \w"
    )
    found = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sorted((ROOT / "oracled").rglob("*.py"))
        for line in path.read_text().splitlines()
        if blas_calls.search(line.split("#")[0]) and not line.strip().startswith(('"', "'"))
    ]
    found += [
        f"{path.relative_to(ROOT)}:{line}: np.einsum of several operands"
        for path in sorted((ROOT / "oracled").rglob("*.py"))
        for line in _contracting_einsums(path.read_text())
    ]
    assert found == []


def test_every_deployment_runs_the_daemon_without_idle_blas_threads(tmp_path: Path) -> None:
    """The image, compose and the unit set OPENBLAS_NUM_THREADS=1 (OpenBLAS also reads
    OMP_NUM_THREADS and GOTO_NUM_THREADS; none of them set another value), and under it the
    daemon on every CPU has exactly the threads of the daemon pinned to one CPU, which starts no
    BLAS thread. With a thread per CPU asked for, on a machine of more than one CPU, it has more
    (one per CPU but one): what the setting keeps away."""
    envs = deployment_environments()
    assert envs["image"] == envs["compose"] == envs["unit"] == {"OPENBLAS_NUM_THREADS": "1"}
    env = envs["image"]
    pinned = _threads_of_a_running_daemon(tmp_path, env, pin=True)
    assert _threads_of_a_running_daemon(tmp_path, env, pin=False) == pinned
    cpus = len(os.sched_getaffinity(0))
    if cpus > 1:
        one_per_cpu = _threads_of_a_running_daemon(
            tmp_path, {"OPENBLAS_NUM_THREADS": str(cpus)}, pin=False
        )
        assert one_per_cpu == pinned + cpus - 1


def test_a_daemon_started_without_the_setting_has_no_idle_blas_thread_and_an_operator_can_override(
    tmp_path: Path,
) -> None:
    """Found reviewing `make run` and `make demo`: they set no BLAS variable, and the daemon
    they start carried an idle BLAS thread per CPU but one. The command now sets
    OPENBLAS_NUM_THREADS=1 itself before numpy is imported, when none of the variables OpenBLAS
    reads is set: unset, it has the threads of the daemon pinned to one CPU; a value the
    operator gives (OMP_NUM_THREADS, which OpenBLAS also reads) is kept."""
    cpus = len(os.sched_getaffinity(0))
    pinned = _threads_of_a_running_daemon(tmp_path, {"OPENBLAS_NUM_THREADS": "1"}, pin=True)
    assert _threads_of_a_running_daemon(tmp_path, {}, pin=False) == pinned
    if cpus > 1:
        override = _threads_of_a_running_daemon(tmp_path, {"OMP_NUM_THREADS": str(cpus)}, pin=False)
        assert override == pinned + cpus - 1

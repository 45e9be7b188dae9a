"""What deploy/ holds is valid: the systemd units (systemd-analyze verify), the Kubernetes
manifests (the API schemas of kubernetes-validate), and a wheel built from this checkout,
installed into a fresh virtual environment, runs the word-count example."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
ELASTICCODE = str(Path(sys.executable).with_name("elasticcode"))


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is not installed (apt install systemd)")
        pytest.skip("systemd-analyze is not installed")
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert [u.name for u in units] == ["elasticcode-agent.service", "elasticcode-server.service"]
    for unit in units:  # the installed paths replaced by this checkout's
        text = unit.read_text().replace("/opt/elasticcode/bin/elasticcode", ELASTICCODE)
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u.name) for u in units)],
        capture_output=True,
        text=True,
    )
    # a bad setting is a warning naming the unit's file (the exit code stays 0)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if ".service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_the_kubernetes_manifests_match_the_api_schemas() -> None:
    import kubernetes_validate

    manifests = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    kinds = []
    for path in manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
            kinds.append(f"{doc['kind']}/{doc['metadata']['name']}")
    assert kinds == [
        "DaemonSet/elasticcode-agent",
        "Service/elasticcode-server",
        "Deployment/elasticcode-server",
    ]


def test_a_wheel_from_this_checkout_runs_the_word_count_example(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = wheels.glob("elasticcode-*.whl")
    if (ROOT / "src/elasticcode/network/server/web/index.html").exists():  # built by setup
        names = zipfile.ZipFile(wheel).namelist()
        assert "elasticcode/network/server/web/index.html" in names
        assert any(n.startswith("elasticcode/network/server/web/assets/") for n in names)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    lock = ROOT / "requirements" / "dev.lock"  # the versions the tests use
    subprocess.run([*pip, "--disable-pip-version-check", "-c", str(lock), str(wheel)], check=True)
    example = tmp_path / "wordcount"
    shutil.copytree(ROOT / "examples" / "wordcount", example, ignore=shutil.ignore_patterns("out"))
    done = subprocess.run(
        [str(env_dir / "bin" / "elasticcode"), "run", "flow.yaml", "--quiet"],
        cwd=example,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (example / "out" / "counts.json").exists()
    version = subprocess.run(
        [str(env_dir / "bin" / "elasticcode"), "--version"], capture_output=True, text=True
    )
    print(f"{wheel.name}: {version.stdout.strip()}")

"""What a user installs: the wheel and sdist (`python -m build`) in a fresh virtual environment with
the console scripts working, the TypeScript client from its `npm pack` tarball, the licence and the
version; and the README's install commands, which .ci/run runs."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import parakeet_streaming

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "parakeet_streaming.cli"]


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 600) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_version_and_licence() -> None:
    assert run(CLI + ["--version"]).strip() == f"parakeet-server {parakeet_streaming.__version__}"
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(python3 -m venv .venv .*?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command_and_both_take_torch_from_the_cpu_index() -> None:
    serve_cmd, test_cmd = readme_commands()[:2]
    cpu = "pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu"
    assert cpu in serve_cmd and cpu in test_cmd
    ci = (ROOT / ".ci" / "run").read_text().replace(" -q", "")
    # CI reaches no index but the registries: the same pin takes the machine's local CPU wheel,
    # and CI checks that it got the CPU build.
    assert "pip install torch==2.13.0\n" in ci and "sys.exit(0 if cpu else 1)" in ci
    for step in test_cmd.replace(" -q", "").split(" && "):
        if step != cpu:
            assert step in ci, f"{step!r} of the README's test command is not in .ci/run"


@pytest.mark.slow
def test_wheel_and_sdist_build_and_install_with_working_console_scripts(tmp_path) -> None:
    """`python -m build` (sdist, then the wheel from the sdist); the wheel goes into a fresh venv
    without its dependencies (they would pull a CUDA torch): those come from this environment."""
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], timeout=900)
    wheel = next(dist.glob("parakeet_streaming-*.whl"))
    sdist = next(dist.glob("parakeet_streaming-*.tar.gz"))
    version = parakeet_streaming.__version__
    assert f"-{version}-" in wheel.name and sdist.name.endswith(f"-{version}.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "parakeet_streaming/server/static/demo.html" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert any(n.endswith("/LICENSE") for n in tarfile.open(sdist).getnames())

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)])
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}  # torch etc., not this checkout
    where = run([str(bin_dir / "python"), "-c", "import parakeet_streaming; print(parakeet_streaming.__file__)"],
                cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(venv), where
    assert run([str(bin_dir / "parakeet-server"), "--version"], cwd=tmp_path, env=env).strip() == \
        f"parakeet-server {version}"
    assert "PARAKEET_WS_PORT" in run([str(bin_dir / "parakeet-server"), "serve", "--help"], cwd=tmp_path, env=env)
    assert "stream" in run([str(bin_dir / "parakeet-client"), "--help"], cwd=tmp_path, env=env)


@pytest.mark.slow
def test_typescript_client_installs_from_its_npm_pack_tarball(tmp_path) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the TypeScript client")
    package = tmp_path / "package"
    shutil.copytree(ROOT / "clients" / "typescript", package, ignore=shutil.ignore_patterns("node_modules", "dist"))
    run(["npm", "ci", "--no-audit", "--no-fund"], cwd=package)
    tarball = package / run(["npm", "pack", "--silent"], cwd=package).strip().splitlines()[-1]
    assert tarball.name.startswith("parakeet-streaming-client-") and tarball.exists()
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "version": "1.0.0", "type": "module", "private": true}')
    run(["npm", "install", "--no-audit", "--no-fund", str(tarball)], cwd=app)
    script = ("import { StreamingClient, decodeWav, transcribe } from 'parakeet-streaming-client';"
              "import { startMicrophone } from 'parakeet-streaming-client/mic';"
              "console.log([StreamingClient, decodeWav, transcribe, startMicrophone].map((f) => typeof f).join(' '));")
    assert run(["node", "--input-type=module", "-e", script], cwd=app).strip() == "function function function function"

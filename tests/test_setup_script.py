"""scripts/setup.sh with a stand-in interpreter: which torch it asks pip for, what it prints.

The stand-in ``.venv/bin/python`` logs its arguments and answers as a venv without torch
would, so no package is installed and no network is touched.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

STUB = r"""#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
case "$1" in
    --version) echo "Python 3.11.0"; exit 0 ;;
    -c) case "$2" in *"import torch"*) exit 1 ;; *) exit 0 ;; esac ;;
    -) cat > /dev/null; exit "${STUB_PROBE:-0}" ;;
    -m)
        if [[ "$*" == *"index versions torch"* ]]; then
            [ -n "${STUB_VERSIONS:-}" ] && echo "Available versions: $STUB_VERSIONS"
            exit 0
        fi
        if [ -n "${STUB_FAIL:-}" ] && [[ "$*" == *"$STUB_FAIL"* ]]; then
            echo "ERROR: No matching distribution found for $STUB_FAIL" >&2
            exit 1
        fi
        exit 0 ;;
esac
exit 0
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    _executable(tmp_path / ".venv" / "bin" / "python", STUB)
    return tmp_path


def run_setup(checkout, *args, gpu=False, **env):
    bin_dir = checkout / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    if gpu:
        _executable(bin_dir / "nvidia-smi", "#!/usr/bin/env bash\nexit 0\n")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_")}
    path = env.pop("PATH", os.environ["PATH"])
    full_env.update(PATH=f"{bin_dir}:{path}", STUB_LOG=str(checkout / "log"))
    full_env.update(env)
    done = subprocess.run(
        ["bash", str(checkout / "scripts" / "setup.sh"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )
    log = (checkout / "log").read_text().splitlines() if (checkout / "log").exists() else []
    torch_installs = [line for line in log if " install " in line and "-e" not in line.split()]
    return done, torch_installs


def _args(line: str) -> list[str]:
    return line.split(" install ", 1)[1].split()


needs_no_gpu = pytest.mark.skipif(
    shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi"
)


@needs_no_gpu
def test_cpu_machine_takes_the_cpu_index_and_says_each_step(checkout):
    done, installs = run_setup(checkout, "test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [_args(line)[:3] for line in installs] == [["torch", "--index-url", CPU_INDEX]]
    lines = done.stdout.strip().splitlines()
    assert lines and all(line.startswith("setup: ") for line in lines), lines
    assert any(f"TORCH_INDEX_URL={CPU_INDEX}" in line for line in lines)
    assert any("extras [test]" in line for line in lines)


@needs_no_gpu
def test_unreachable_index_falls_back_to_plain_pip_install_torch(checkout):
    done, installs = run_setup(checkout, STUB_PROBE="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [_args(line) for line in installs] == [["torch"]]
    assert "pip install torch instead" in done.stdout


def test_torch_wheel_names_what_is_installed(checkout):
    done, installs = run_setup(checkout, TORCH_WHEEL="/wheels/torch-2.13.0+cpu.whl")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [_args(line) for line in installs] == [["/wheels/torch-2.13.0+cpu.whl"]]


@pytest.mark.parametrize("gpu, env", [(True, {}), (False, {"TORCH_INDEX_URL": ""})])
def test_gpu_machine_or_an_empty_index_is_plain_pip_install_torch(checkout, gpu, env):
    done, installs = run_setup(checkout, gpu=gpu, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [_args(line) for line in installs] == [["torch"]]


def test_a_pip_failure_is_shown_and_stops_setup(checkout):
    done, _ = run_setup(checkout, TORCH_INDEX_URL="", STUB_FAIL="-e .[models]")
    assert done.returncode != 0
    assert "ERROR: No matching distribution found for -e .[models]" in done.stdout + done.stderr
    assert "setup: done" not in done.stdout


def test_gpu_mode_installs_the_build_extra_and_needs_nvcc(checkout):
    if Path("/usr/bin/nvcc").exists() or Path("/bin/nvcc").exists():
        pytest.skip("nvcc is in /usr/bin here")
    done, _ = run_setup(checkout, "gpu", TORCH_INDEX_URL="", PATH="/usr/bin:/bin")
    log = (checkout / "log").read_text()
    assert "install -e .[models,bench,test,build]" in log
    assert done.returncode == 1
    assert "nvcc is not on the PATH" in done.stderr


@needs_no_gpu
def test_cpu_machine_prefers_a_cpu_build_the_indexes_already_offer(checkout):
    done, installs = run_setup(
        checkout, "test", STUB_VERSIONS="2.15.0, 2.14.1, 2.13.0+cpu, 2.13.0, 2.12.0+cpu"
    )
    assert done.returncode == 0, done.stderr
    assert [_args(line) for line in installs] == [["torch==2.13.0+cpu"]]
    assert "setup: installing torch==2.13.0+cpu (the newest CPU build" in done.stdout

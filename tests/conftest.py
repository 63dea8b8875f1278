import pytest
import torch


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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

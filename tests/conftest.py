import os

import pytest

# Tests run on 2 cores next to multi-process jobs: one intra-op thread keeps them fair.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield


# `make test-fast` (`-m "not slow"`) is the tier every change waits for: <= 3 minutes on 2 cores.
# A test in it slower than this is named at the end of the run, with the fix, so the tier cannot
# grow slow unnoticed.
FAST_TEST_S = 30.0


def slow_in_fast_tier(reports, limit_s: float = FAST_TEST_S) -> list[tuple[float, str]]:
    """(seconds, test id) of the tests whose setup + call + teardown took over ``limit_s``, slowest first."""
    total: dict[str, float] = {}
    for r in reports:
        if hasattr(r, "when") and hasattr(r, "duration"):
            total[r.nodeid] = total.get(r.nodeid, 0.0) + r.duration
    return sorted(((s, n) for n, s in total.items() if s > limit_s), reverse=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if "not slow" not in (config.getoption("markexpr") or ""):
        return
    reports = [r for rs in terminalreporter.stats.values() for r in rs]
    for seconds, nodeid in slow_in_fast_tier(reports):
        terminalreporter.write_line(
            f"make test-fast: {nodeid} took {seconds:.0f}s (over {FAST_TEST_S:g}s): mark it "
            "@pytest.mark.slow so that it runs in `make test` only", yellow=True)

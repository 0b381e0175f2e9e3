"""Shared test plumbing. Broker fixtures (embedded amqtt and a real mosquitto on ephemeral
loopback ports) live in tests/brokers.py.

Parallel runs: ``./dev test`` runs pytest-xdist workers with ``--dist loadgroup``. Every
fixture is safe in a worker of its own (ephemeral ports, ``tmp_path`` under the worker's own
base temp dir, one Chromium per worker and module). A test that must share one resource with
other tests gets ``@pytest.mark.xdist_group("name")``, with the reason beside it; xdist then
runs the whole group in one worker, one test after the other (without xdist the mark does
nothing). ``pytest_collection_modifyitems`` below sets the groups that follow from fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

pytest_plugins = ["tests.brokers", "tests.cluster"]

# No per-example time limit for property tests: speed is measured in benchmarks, not asserted
# in tests, and hypothesis's default 200 ms deadline failed a 0.1 ms example that a loaded
# machine (4 workers, 2 cores) once stretched to 357 ms. Loaded here, so every @given has it.
settings.register_profile("rallycast", deadline=None)
settings.load_profile("rallycast")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# The 3-node NATS cluster takes ~6 s and three nats-server processes to start (tests/cluster.py);
# its tests share one cluster in one worker instead of starting one cluster per worker.
NATS_GROUP = "nats-cluster"


def uses_nats_cluster(item: pytest.Item) -> bool:
    """A test on the shared NATS cluster, or one marked ``xdist_group(NATS_GROUP)`` because
    it starts nats-server processes of its own."""
    if any(NATS_GROUP in mark.args for mark in item.iter_markers("xdist_group")):
        return True
    names = set(getattr(item, "fixturenames", ()))
    if names & {"nats_broker", "nats_cluster_runner"}:
        return True
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    # any_broker / any_broker_process pick the broker fixture by name at run time.
    return any(params.get(name) == "nats" for name in ("any_broker", "any_broker_process"))


def spreads(item: pytest.Item) -> bool:
    """A Chromium test outside any xdist group: a group keeps its tests in file order, as a
    run without xdist has them (the NATS tests share one cluster, and a test that kills a node
    leaves it changed for the ones after it)."""
    uses_chromium = "chromium" in getattr(item, "fixturenames", ())
    return uses_chromium and item.get_closest_marker("xdist_group") is None


def spread_browser_tests(items: list[pytest.Item]) -> list[pytest.Item]:
    """The same tests with the Chromium ones spread evenly among the rest (each kind keeps
    its order). Collected in file order they all come last, and the workers would end the run
    with a Chromium each on two cores: slow, and the pages' timing checks fail."""
    browser = [item for item in items if spreads(item)]
    if not browser or len(browser) == len(items):
        return items
    others = [item for item in items if not spreads(item)]
    spread: list[pytest.Item] = []
    taken = 0
    for k, item in enumerate(browser):  # the k-th goes amid its share of the others
        until = round((k + 0.5) * len(others) / len(browser))
        spread.extend(others[taken:until])
        spread.append(item)
        taken = until
    spread.extend(others[taken:])
    return spread


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--nats-cluster",
        choices=("with", "skip", "only"),
        default="with",
        help="run the NATS cluster tests with the rest (default), leave them out, or run only "
        "them: ./dev test runs them on their own after the rest (see dev)",
    )


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups from the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    choice = config.getoption("--nats-cluster")
    if choice != "with":
        want = choice == "only"
        keep = [item for item in items if uses_nats_cluster(item) == want]
        config.hook.pytest_deselected(
            items=[item for item in items if uses_nats_cluster(item) != want]
        )
        items[:] = keep
    for item in items:
        if uses_nats_cluster(item) and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(NATS_GROUP))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects the same order
        items[:] = spread_browser_tests(items)


class XdistGroupNames:
    """Names each grouped test ``<nodeid>@<group>`` in an xdist worker under --dist loadgroup:
    the controller schedules a group by that suffix. pytest-xdist 3.8.0 sets it through
    ``item._nodeid``, which pytest 9.2 no longer reads (a node's id is ``item._id``), so without
    this every group is silently spread over the workers."""

    @pytest.hookimpl(trylast=True)  # after -k/-m deselection and xdist's own (no-op) renaming
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from _pytest.nodeid import NodeId

        for item in items:
            marks = item.iter_markers("xdist_group")
            names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                            for m in marks})  # fmt: skip
            if names and "@" not in item.nodeid:
                item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "loadgroup", False):  # set in xdist workers only
        config.pluginmanager.register(XdistGroupNames(), "rallycast-xdist-group-names")


def require_program(path_or_name: str) -> str:
    """Path of a program the test needs. Missing: skipped on a developer's machine, but a
    failure under CI, where .ci/run installs it (a silent skip would hide a broken CI)."""
    found = shutil.which(path_or_name)
    if found:
        return found
    message = f"{path_or_name} is not installed (./dev test installs it with apt-get)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS

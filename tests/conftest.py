import pytest

pytest_plugins = [
    "tests.host_fixtures",
    "tests.daemon_fixtures",
    "tests.fakes.fixtures",
    "tests.nobody",
    "tests.report_guard",
    "tests.figures",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Host tests that share the session's test host (and its Podman) run one after
    another, on one pytest-xdist worker (``--dist loadgroup``); those that boot hosts of
    their own (``fresh_testhost_factory``: private namespaces, disk and cgroup, unique
    names) run in order on another, beside them; the fast tests fill the gaps."""
    for item in items:
        if item.get_closest_marker("host") is None:
            continue
        shared = "testhost" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.xdist_group("host" if shared else "own-hosts"))

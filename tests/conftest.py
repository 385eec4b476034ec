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
    """The host tests run one after another, on one pytest-xdist worker (``--dist
    loadgroup``); the fast tests, mostly CPU, on the other beside them. (Two streams of
    host tests at once, each booting test hosts, plus the fuzzers, overloaded a fresh
    Debian 12 root on two cores: four tests ran into their time limits there.)"""
    for item in items:
        if item.get_closest_marker("host") is not None:
            item.add_marker(pytest.mark.xdist_group("host"))

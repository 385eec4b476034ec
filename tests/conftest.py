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
    """The host tests share one test host and its Podman, so they run one after another,
    on one pytest-xdist worker (``--dist loadgroup``); the fast tests run beside them."""
    for item in items:
        if item.get_closest_marker("host") is not None:
            item.add_marker(pytest.mark.xdist_group("host"))

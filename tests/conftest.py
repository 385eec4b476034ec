pytest_plugins = [
    "tests.host_fixtures",
    "tests.daemon_fixtures",
    "tests.fakes.fixtures",
    "tests.nobody",
    "tests.report_guard",
]

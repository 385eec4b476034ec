pytest_plugins = ["tests.host_fixtures"]

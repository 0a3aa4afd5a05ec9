pytest_plugins = ["regtest.pytest_plugin"]

"""Constants shared by the multijob tests (a module of its own: every test folder has a conftest)."""

SECRET = "multijob-test-secret-0123456789abcdef"

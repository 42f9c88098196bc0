"""Re-exports for tests: ``from helpers import wait_for, as_json``."""

from conftest import as_json, docker_available, free_port, needs_docker, new_user, wait_for  # noqa: F401

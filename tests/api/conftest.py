"""Fixtures of the fast API tier (see app_client.py): one in-process app per test module."""

from __future__ import annotations

import pytest

from app_client import Api, make_api


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Api:
    """One app per test module (state accumulates within a module, as on a real daemon)."""
    return make_api(tmp_path_factory.mktemp("api-state"))

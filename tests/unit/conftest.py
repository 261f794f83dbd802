"""Fixtures for the unit tier."""

from __future__ import annotations

from typing import Any

import pytest

from kuberl_operator.api.crd import openapi_schema


@pytest.fixture(scope="session")
def schema() -> dict[str, Any]:
    return openapi_schema()

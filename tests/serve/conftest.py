"""Fixtures for the serving tests (helpers live in serve_utils.py)."""
from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def make_app():
    def make(engine_kwargs: dict | None = None, **app_kwargs: Any):
        from serve_utils import Factory

        factory = Factory(**(engine_kwargs or {}))
        from amd_llama4.serve.app import build_app

        return build_app(factory, **app_kwargs), factory

    return make



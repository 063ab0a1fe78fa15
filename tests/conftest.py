"""Shared test setup: keep torch on one thread (the CI machine has two cores, shared)."""

from __future__ import annotations

import os

# Flower: no telemetry or update checks from tests (set before flwr is imported anywhere).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

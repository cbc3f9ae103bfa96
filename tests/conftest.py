"""Shared fixtures. The whole test session runs offline: sockets to non-loopback addresses are blocked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from satlib.config import HF_OFFLINE_VARIABLES, block_network

ROOT = Path(__file__).resolve().parents[1]

os.environ.update(HF_OFFLINE_VARIABLES)
block_network(True)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT

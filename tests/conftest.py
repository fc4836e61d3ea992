"""Shared pytest setup: markers `slow` and `cuda`, and the one helper that finds the real clips in ../shared/data."""
import os

# before torch loads OpenMP (see instag/__init__.py): passive waiting keeps the C++ renderer and torch from starving each other
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long-running test (minutes); deselect with -m "not slow"')
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU; skipped without one')


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda: return
    skip = pytest.mark.skip(reason='needs CUDA, and this machine has no CUDA device')
    for item in items:
        if 'cuda' in item.keywords: item.add_marker(skip)


def shared_data_path() -> Path:
    """The real talking-head clips beside the checkout (`../shared/data`, or `INSTAG_SHARED_DATA`); skips the calling
    test with the reason when they are absent. The clips are read in place, never copied into the project."""
    env = os.environ.get('INSTAG_SHARED_DATA')
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
    if not (path / 'MANIFEST.md').exists():
        pytest.skip(f'real clips not found at {path}: put the shared data folder beside the checkout '
                    '(../shared/data) or set INSTAG_SHARED_DATA')
    return path


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; skips with a clear reason when absent."""
    return shared_data_path()

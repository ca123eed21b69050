"""Shared test settings. The tests mirror the package tree (quant/, adapters/, tasks/, classification/, detection/,
pointcloud/, tools/); the helper modules beside this file (repo_paths, timm_toys, recon_helpers) import from any of them."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The models in the tests are tiny: one intra-op thread avoids OpenMP start-up and spinning costing more than
    the work itself (measured up to 20x slower with two threads on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

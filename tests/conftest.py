"""Shared test set-up: the ``cuda`` marker skips cleanly on machines without a CUDA device."""
import pytest
import torch

import dvmsr_mma  # noqa: F401  (patches basicsr and fills the registries before any test imports basicsr)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip_cuda)

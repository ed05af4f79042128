"""Shared test set-up: the ``cuda`` marker skips cleanly on machines without a CUDA device; without an NVIDIA GPU,
Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, read when torch imports triton, so set here
first) so that tests/test_ops_scan_triton.py checks the real kernels on CPU tensors."""
import os

if not (os.path.isdir('/proc/driver/nvidia/gpus') and os.listdir('/proc/driver/nvidia/gpus')):
    os.environ.setdefault('TRITON_INTERPRET', '1')

# first: patches basicsr and fills the registries before any test imports basicsr, and sets OpenMP's spin-wait
# default, which applies only before torch loads (dvmsr_mma/__init__.py)
import dvmsr_mma  # noqa: E402,F401

# isort: split
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """The ops dispatch as in a new process: no probe or kernel import cached, nothing logged, no path forced;
    the monkeypatch."""
    from dvmsr_mma.ops import cuda_kernels, dispatch
    monkeypatch.setattr(dispatch, '_probe_cache', {})
    monkeypatch.setattr(cuda_kernels, '_imported', {})
    monkeypatch.setattr(dispatch, '_logged', set())
    monkeypatch.delenv(dispatch.ENV_FORCE_TORCH, raising=False)
    monkeypatch.delenv(dispatch.ENV_OPS, raising=False)
    return monkeypatch


@pytest.fixture
def fresh_logger(monkeypatch):
    """Each run sets up BasicSR's logger anew (stderr and its own log file); BasicSR does it once per process."""
    import logging

    import basicsr.utils.logger
    logger = logging.getLogger('basicsr')
    monkeypatch.setattr(logger, 'handlers', [])
    monkeypatch.setattr(basicsr.utils.logger, 'initialized_logger', {})
    yield
    for handler in logger.handlers:
        handler.close()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip_cuda)


def _write_pairs(folder, count, size, seed, scale=2):
    """``count`` smooth random HR images (so there is something to learn) and their LR, as HR/ and LR/ folders."""
    rng = np.random.default_rng(seed)
    hr_dir, lr_dir = folder / 'HR', folder / 'LR'
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir()
    for i in range(count):
        hr = cv2.resize(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8), (size, size),
                        interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(hr_dir / f'{i:04d}.png'), hr)
        lr = cv2.resize(hr, (size // scale, size // scale), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(lr_dir / f'{i:04d}.png'), lr)
    return str(hr_dir), str(lr_dir)


@pytest.fixture
def write_pairs():
    """Factory: ``write_pairs(folder, count, size, seed, scale=2) -> (hr_dir, lr_dir)``."""
    return _write_pairs

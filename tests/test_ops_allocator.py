"""The first CPU kernel call sets glibc's malloc to reuse freed memory for large tensors, unless the user chose."""
import os
import platform
import subprocess
import sys

import pytest

pytest.importorskip('numba', reason='the numba CPU kernels are optional (pip install numba)')
from dvmsr_mma.ops import allocator  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc',
                                reason='glibc malloc only')

FAULT_PROBE = r'''
import resource, torch


def faults():
    """Minor page faults over three 40 MB tensors, allocated, written and freed one after another."""
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        torch.empty(10 << 20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start


before = faults()
from dvmsr_mma.ops.conv_cpu import causal_conv1d_tokens_cpu
causal_conv1d_tokens_cpu(torch.ones(1, 8, 4), torch.ones(4, 4))  # the first kernel call
# the heap grows until a freed block fits the next one (posix_memalign asks a little more than it freed)
print(before, min(faults() for _ in range(5)))
'''


def test_large_tensors_reuse_freed_memory_after_the_first_kernel_call():
    """Each 40 MB tensor was a fresh mapping (10,000 page faults each); after the first kernel call, once the heap
    has grown, it reuses the memory the last one freed."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith('MALLOC_') or k in ('GLIBC_TUNABLES', 'LD_PRELOAD', allocator.ENV_MALLOC))}
    out = subprocess.run([sys.executable, '-c', FAULT_PROBE], env=env, capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    if before < 20000:  # glibc's own thresholds before it, but fresh mappings faulted in as huge pages (THP always)
        pytest.skip(f'{before} page faults for 120 MB of fresh mappings: transparent huge pages, nothing to count')
    assert after < before // 10, (before, after)


def clear_malloc_environment(monkeypatch):
    mine = [k for k in os.environ if k.startswith('MALLOC_')]
    for name in mine + ['GLIBC_TUNABLES', 'LD_PRELOAD', allocator.ENV_MALLOC]:
        monkeypatch.delenv(name, raising=False)


def test_users_choice_reads_the_environment(monkeypatch):
    """The opt-out, glibc's MALLOC_* variables and malloc tunables, and another allocator preloaded."""
    clear_malloc_environment(monkeypatch)
    assert not allocator.users_choice()
    for name, value in ((allocator.ENV_MALLOC, 'System'), ('MALLOC_TRIM_THRESHOLD_', '131072'),
                        ('GLIBC_TUNABLES', 'glibc.malloc.trim_threshold=131072'),
                        ('LD_PRELOAD', '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2')):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert allocator.users_choice() and not allocator.keep_freed_memory(), name
    monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.cpu.hwcaps=-AVX512F')
    assert not allocator.users_choice()


@pytest.mark.parametrize('value', ['sytem', 'off', '1'])
def test_a_wrong_setting_is_one_line(monkeypatch, value):
    from dvmsr_mma.utils.errors import OptionError
    clear_malloc_environment(monkeypatch)
    monkeypatch.setenv(allocator.ENV_MALLOC, value)
    with pytest.raises(OptionError, match=f'^DVMSR_MMA_MALLOC={value}: use auto \\(the default\\) or system$'):
        allocator.keep_freed_memory()
    monkeypatch.setenv(allocator.ENV_MALLOC, ' Auto ')
    assert not allocator.users_choice()

"""The OpenMP spin-wait default set on ``import dvmsr_mma`` (see dvmsr_mma/__init__.py)."""
import os
import subprocess
import sys

import pytest

SHOW = "import os; {first}import dvmsr_mma; print(os.environ.get('GOMP_SPINCOUNT'))"


def spincount_after_import(first: str = '', **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != 'GOMP_SPINCOUNT'}
    environ.update(env)
    out = subprocess.run([sys.executable, '-c', SHOW.format(first=first)], env=environ, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize('first, env, expected', [
    ('', {}, '1000'),  # set before torch (libgomp) loads, through the package import
    ('', {'GOMP_SPINCOUNT': '7'}, '7'),  # the user's own value is kept
    ('import torch; ', {}, 'None'),  # torch first: libgomp has read it already, so nothing is set
])
def test_spincount_default(first, env, expected):
    assert spincount_after_import(first, **env) == expected

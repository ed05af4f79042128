"""benchmarks/bench_mixer.py and benchmarks/plain_time.py: both start, agree on their cases, and the harness's
bookkeeping (disturbed runs, the profile groups) does what its docstring says. No timing is asserted."""
import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks')
sys.path.insert(0, BENCH)
import bench_mixer  # noqa: E402
import plain_time  # noqa: E402


@pytest.mark.parametrize('script', ['bench_mixer.py', 'plain_time.py'])
def test_help(script):
    out = subprocess.run([sys.executable, os.path.join(BENCH, script), '--help'], capture_output=True, text=True)
    assert out.returncode == 0 and 'usage' in out.stdout


def test_cases_shared():
    assert repr(plain_time.CASES) in bench_mixer.CHILD  # the children build what the plain script builds
    for case in plain_time.CASES:
        assert plain_time.parse_args(['--case', case]).case == case


def test_kept_prefers_undisturbed_runs():
    assert bench_mixer.kept([(1.0, 1.0), (1.5, 0.0), (1.6, 0.1)]) == (1.5, 0.0, False)
    assert bench_mixer.kept([(1.0, 1.0), (1.5, 0.9)]) == (1.0, 1.0, True)  # none calm: the best, flagged
    assert bench_mixer.kept([(1.0, 2.1), (0.9, 3.0)], expected=2.0) == (1.0, 2.1, False)  # the busy loops' 2 cores


def test_profile_groups():
    group = {key: next(label for label, match in bench_mixer.PROFILE_GROUPS if match(key)) for key in (
        '_SelectiveScanTokens', '_SelectiveScanTokensBackward', 'aten::addmm', 'aten::convolution_backward',
        'aten::mkldnn_convolution', '_CausalConv1dTokensBackward', 'aten::copy_')}
    assert list(group.values()) == ['scan fwd', 'scan bwd', 'mm/addmm', 'convs', 'convs', 'causal conv', 'other']


def test_child_env_drops_overrides(monkeypatch):
    monkeypatch.setenv('GOMP_SPINCOUNT', '5')
    monkeypatch.setenv('MALLOC_ARENA_MAX', '2')
    assert 'GOMP_SPINCOUNT' not in bench_mixer.child_env(False) and 'MALLOC_ARENA_MAX' not in bench_mixer.child_env(0)
    assert bench_mixer.child_env(True)['GOMP_SPINCOUNT'] == '5'


@pytest.mark.slow
def test_child_and_plain_script_time_the_same_call():
    """A training step at 8x8 through both: each times the requested runs of this checkout's package."""
    env = bench_mixer.child_env(False)
    child = bench_mixer.run_child(env, bench_mixer.ROOT, 'time', 'torch', 'dvmsr_train', 1, 2, 8)
    assert len(child['runs']) == 2 and all(t > 0 and load >= 0 for t, load in child['runs'])
    out = subprocess.run([sys.executable, os.path.join(BENCH, 'plain_time.py'), bench_mixer.ROOT, '--case',
                          'dvmsr_train', '--size', '8', '--warmup', '1', '--runs', '2', '--json'],
                         capture_output=True, text=True, env=env, check=True)
    assert len(json.loads(out.stdout.splitlines()[-1])['times']) == 2

"""Mixer benchmark: the networks on CPU with this checkout's ops against a baseline commit read from git, in one run.

    python benchmarks/bench_mixer.py [--baseline 9cc0b7e] [--rounds N] [--quick] [--torch-first]

Every case runs in fresh child processes, the baseline (the package of ``--baseline``, from ``git archive``) and
this checkout back to back in each of ``--rounds`` rounds (default 5); each child times a few warm runs and keeps
its best. The speedup printed is the median over rounds of the paired ratio (see :func:`compare`).
Threads: torch's default (one per core), as a ``basicsr`` command has them.

* DVMSR x4 (released size) forward on a 256x256 LR image, MMA-T x2 forward on 128x128, no grad;
* a DVMSR x4 training step: batch 4 of 48x48 LR patches, L1 loss, forward and backward;
* the peak resident-memory growth over the DVMSR 256x256 forward (VmHWM reset first, Linux), with glibc told to
  map every block over 1 MB on its own (``MALLOC_MMAP_THRESHOLD_``), so that freed tensors leave the resident set
  and the peak is that of the live tensors, not of the allocator's history (which made it vary by 100 MB);
* the share of ``aten::copy_`` in the self-CPU time of that forward under ``torch.profiler`` (this checkout);
* DVMSR x4 at 128x128 through ``basicsr bench`` quiet and beside two busy-loop processes (this checkout);
* the same forward in a script that imports torch before dvmsr_mma (so the package cannot shorten libgomp's spin),
  quiet and loaded, without and with ``GOMP_SPINCOUNT=1000`` in the environment.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = '9cc0b7e'

CHILD = r'''
import sys, time, json
root, case, repeats, torch_first = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == '1'
if torch_first:
    import torch
sys.path.insert(0, root)
import dvmsr_mma  # first, as in a basicsr command (unless torch_first)
import torch
torch.manual_seed(0)
if case.startswith('dvmsr'):
    from dvmsr_mma.archs.dvmsr_arch import DVMSR
    net = DVMSR()
else:
    from dvmsr_mma.archs.mma_arch import MMA_T
    net = MMA_T(upscale=2)
size = {'dvmsr_fwd': 256, 'dvmsr_fwd_128': 128, 'mmat_fwd': 128, 'dvmsr_train': 48, 'dvmsr_rss': 256}[case]
times = []
if case == 'dvmsr_train':
    x, hr = torch.rand(4, 3, size, size), torch.rand(4, 3, 4 * size, 4 * size)
    def step():
        net.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(net(x), hr).backward()
else:
    net.eval()
    torch.set_grad_enabled(False)
    x = torch.rand(1, 3, size, size)
    step = lambda: net(x)
if case == 'dvmsr_rss':
    net(x[..., :32, :32])
    def kb(field):
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))
    before = kb('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # the peak (VmHWM) starts again from the current RSS
    step()
    print(json.dumps((kb('VmHWM') - before) / 1024))
    sys.exit()
step()
for _ in range(repeats):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
print(json.dumps(times))
'''

COPY_SHARE = r'''
import sys
sys.path.insert(0, sys.argv[1])
import dvmsr_mma
import torch
from torch.profiler import profile, ProfilerActivity
from dvmsr_mma.archs.dvmsr_arch import DVMSR
torch.manual_seed(0)
net = DVMSR().eval()
x = torch.rand(1, 3, 256, 256)
with torch.no_grad():
    net(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        net(x)
events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
total = sum(e.self_cpu_time_total for e in events)
print(' '.join(f'{e.key}={100 * e.self_cpu_time_total / total:.1f}%' for e in events[:6]))
copy = sum(e.self_cpu_time_total for e in events if e.key == 'aten::copy_')
print(f'{100 * copy / total:.2f}')
'''


def run_child(root, case, repeats, torch_first=False, env=None):
    out = subprocess.run([sys.executable, '-c', CHILD, root, case, str(repeats), '1' if torch_first else '0'],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f'{case} in {root} failed:\n{out.stderr[-2000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_tree(commit):
    """The baseline's package in a temporary folder, or None without the git history."""
    folder = tempfile.mkdtemp(prefix=f'dvmsr_mma_{commit}_')
    archive = subprocess.run(['git', '-C', ROOT, 'archive', commit, 'dvmsr_mma'], capture_output=True)
    if archive.returncode:
        shutil.rmtree(folder)
        return None
    subprocess.run(['tar', '-x', '-C', folder], input=archive.stdout, check=True)
    return folder


class BusyLoops:
    """Two CPU-bound processes for the duration (a shared server, DataLoader workers, a parallel test run)."""

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(2)]
        time.sleep(0.5)

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
            proc.wait()


def compare(title, roots, case, rounds, repeats, torch_first=False):
    """Each round runs every root's child back to back; prints each side's best time and, the headline, the median
    over rounds of the round's baseline / current ratio (the machine's speed drifts over minutes: a ratio of two
    runs a few seconds apart follows it, a ratio of two best-ofs taken minutes apart need not)."""
    best = {name: float('inf') for name in roots}
    ratios = []
    for _ in range(rounds):
        times = {name: min(run_child(root, case, repeats, torch_first)) for name, root in roots.items()}
        best = {name: min(best[name], t) for name, t in times.items()}
        if 'baseline' in times:
            ratios.append(times['baseline'] / times['current'])
    line = '  '.join(f'{name} {t:.3f} s' for name, t in best.items())
    if ratios:
        ratios.sort()
        line += (f'  -> {statistics.median(ratios):.2f}x faster (median of {len(ratios)} paired rounds, '
                 f'{ratios[0]:.2f}x-{ratios[-1]:.2f}x)')
    print(f'{title}: {line}', flush=True)


def cli_time(env=None):
    """DVMSR x4 128x128 median forward time through ``basicsr bench`` (random weights)."""
    cli = os.path.join(os.path.dirname(sys.executable), 'basicsr')
    command = [cli] if os.path.isfile(cli) else [sys.executable, '-m', 'dvmsr_mma']
    out = subprocess.run(command + ['bench', '--arch', 'DVMSR', '--size', '128x128',
                          '--device', 'cpu', '--runs', '5', '--warmup', '1', '--no-flops', '--json'],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])['runtime_ms'] / 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--baseline', default=BASELINE, help=f'commit to compare against (default {BASELINE})')
    parser.add_argument('--rounds', type=int, default=5, help='rounds per case (one child per side each)')
    parser.add_argument('--quick', action='store_true', help='one round, and no load cases')
    parser.add_argument('--torch-first', action='store_true',
                        help='the paired cases in children that import torch before dvmsr_mma (a library user)')
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    import torch
    roots = {'current': ROOT}
    base = baseline_tree(args.baseline)
    if base:
        roots = {'baseline': base, 'current': ROOT}
    commit = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True).stdout.strip()
    print(f'current {commit} (+ working tree) vs baseline {args.baseline if base else "(no git history)"}; '
          f'threads={torch.get_num_threads()}, rounds={rounds}, {"torch" if args.torch_first else "dvmsr_mma"} '
          f'imported first; {time.strftime("%Y-%m-%d")}', flush=True)
    try:
        compare('DVMSR x4 fwd, LR 256x256        ', roots, 'dvmsr_fwd', rounds, 2, args.torch_first)
        compare('MMA-T x2 fwd, LR 128x128        ', roots, 'mmat_fwd', rounds, 3, args.torch_first)
        compare('DVMSR x4 train step, 4x48x48    ', roots, 'dvmsr_train', rounds, 3, args.torch_first)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
        rss = {name: min(run_child(root, 'dvmsr_rss', 1, env=env) for _ in range(rounds))
               for name, root in roots.items()}
        print('peak RSS growth, DVMSR x4 fwd 256x256: ' + '  '.join(f'{k} {v:.0f} MB' for k, v in rss.items()))
    finally:
        if base:
            shutil.rmtree(base)
    out = subprocess.run([sys.executable, '-c', COPY_SHARE, ROOT], capture_output=True, text=True, check=True)
    top, share = out.stdout.strip().splitlines()[-2:]
    print(f'profile of the DVMSR x4 fwd 256x256 (self CPU): aten::copy_ {share}%; top: {top}')
    if args.quick:
        return
    quiet = cli_time()
    with BusyLoops():
        loaded = cli_time()
    print(f'basicsr bench DVMSR x4 128x128: quiet {quiet:.3f} s, beside two busy loops {loaded:.3f} s, '
          f'{loaded / quiet:.2f}x')
    env = {k: v for k, v in os.environ.items() if k != 'GOMP_SPINCOUNT'}
    for label, extra in (('libgomp default', {}), ('GOMP_SPINCOUNT=1000 set', {'GOMP_SPINCOUNT': '1000'})):
        child_env = dict(env, **extra)
        quiet = min(run_child(ROOT, 'dvmsr_fwd_128', 3, torch_first=True, env=child_env))
        with BusyLoops():
            loaded = min(run_child(ROOT, 'dvmsr_fwd_128', 3, torch_first=True, env=child_env))
        print(f'torch imported before dvmsr_mma, {label}: DVMSR x4 128x128 quiet {quiet:.3f} s, loaded '
              f'{loaded:.3f} s, {loaded / quiet:.2f}x')


if __name__ == '__main__':
    main()

"""A plain timing script: the reference that ``benchmarks/bench_mixer.py``'s check holds its children against.

    python benchmarks/plain_time.py [ROOT] [--case dvmsr_fwd] [--runs 5] [--warmup 2] [--package-first]

Nothing but what a user's script does: import torch (or, with ``--package-first``, ``dvmsr_mma`` first, as a
``basicsr`` command does), then ``dvmsr_mma`` from ``ROOT`` (default: this checkout; give a ``git archive`` of
another commit to time that one), build the network with random weights, run it ``--warmup`` times, time
``--runs`` runs with ``time.perf_counter`` and print the best and the median. No subprocesses, no load
measurement, no environment changes: whatever the benchmark's children add, this does not.
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (title, network, scale, batch, LR size, training step); bench_mixer's children build the same
CASES = {
    'dvmsr_fwd': ('DVMSR x4 fwd, LR 256x256', 'DVMSR', 4, 1, 256, False),
    'mmat_fwd': ('MMA-T x2 fwd, LR 128x128', 'MMA_T', 2, 1, 128, False),
    'dvmsr_train': ('DVMSR x4 train step, 4x48x48', 'DVMSR', 4, 4, 48, True),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', nargs='?', default=ROOT, help='folder holding the dvmsr_mma package to time')
    parser.add_argument('--case', default='dvmsr_fwd', choices=sorted(CASES))
    parser.add_argument('--runs', type=int, default=5, help='timed runs (default 5)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs first (default 2)')
    parser.add_argument('--size', type=int, help='LR size instead of the case\'s (tests)')
    parser.add_argument('--package-first', action='store_true', help='import dvmsr_mma before torch')
    parser.add_argument('--json', action='store_true', help='also print the times as a JSON line')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.package_first:
        import torch  # noqa: F401  (first, as a library user's script)
    sys.path.insert(0, os.path.abspath(args.root))
    import dvmsr_mma  # noqa: F401  (first unless torch is already in: its OpenMP default applies only then)

    # isort: split
    import torch

    title, network, scale, batch, size, train = CASES[args.case]
    if args.size:
        title, size = f'{title.split(",")[0]}, LR {args.size}x{args.size} (--size)', args.size
    torch.manual_seed(0)
    if network == 'DVMSR':
        from dvmsr_mma.archs.dvmsr_arch import DVMSR
        net = DVMSR(upscale=scale)
    else:
        from dvmsr_mma.archs.mma_arch import MMA_T
        net = MMA_T(upscale=scale)
    x = torch.rand(batch, 3, size, size)
    if train:
        hr = torch.rand(batch, 3, scale * size, scale * size)

        def step():
            net.zero_grad(set_to_none=True)
            torch.nn.functional.l1_loss(net(x), hr).backward()
    else:
        net.eval()
        torch.set_grad_enabled(False)

        def step():
            net(x)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    order = 'dvmsr_mma' if args.package_first else 'torch'
    print(f'{title} ({args.root}, {order} imported first, {torch.get_num_threads()} threads): best '
          f'{min(times):.3f} s, median {statistics.median(times):.3f} s of {args.runs} runs after {args.warmup} '
          'warm-up', flush=True)
    if args.json:
        print(json.dumps({'times': times}))


if __name__ == '__main__':
    main()

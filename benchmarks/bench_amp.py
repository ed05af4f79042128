"""Training iteration time in fp32 against mixed precision (``train.amp``), in one run.

    python benchmarks/bench_amp.py [--device cpu|cuda] [--iters 5] [--batch 4] [--lr-size 48]

DVMSR x4 (released size) and MMA-T x2, Adam, L1 loss, a batch of random LR patches; each step is what
``train.amp`` makes of ``SRModel``'s step: autocast from :mod:`dvmsr_mma.training.train_step` around the forward and the
loss, fp16 through its GradScaler. Prints seconds per iteration (best of ``--iters`` after one warm-up) and the
ratio fp32 time / mixed time. fp16 is measured on CUDA only (CPU autocast to fp16 is slow and no one trains so).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dvmsr_mma  # noqa: E402,F401  (first: its OpenMP default applies only before torch loads)

# isort: split
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dvmsr_mma.archs.dvmsr_arch import DVMSR  # noqa: E402
from dvmsr_mma.archs.mma_arch import MMA_T  # noqa: E402
from dvmsr_mma.training.train_step import autocast, grad_scaler  # noqa: E402


def iteration_time(make_net, scale, amp, device, batch, lr_size, iters):
    torch.manual_seed(0)
    net = make_net().to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    scaler = grad_scaler(device, amp)
    lr = torch.rand(batch, 3, lr_size, lr_size, device=device)
    hr = torch.rand(batch, 3, lr_size * scale, lr_size * scale, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = F.l1_loss(net(lr), hr)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == 'cuda':
            torch.cuda.synchronize()

    step()
    best = float('inf')
    for _ in range(iters):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--lr-size', type=int, default=48)
    args = parser.parse_args()
    device = torch.device(args.device)
    precisions = [None, 'bf16'] + (['fp16'] if device.type == 'cuda' else [])
    print(f'device={device} threads={torch.get_num_threads()} batch={args.batch} LR {args.lr_size}x{args.lr_size}')
    for name, make, scale in (('DVMSR x4', DVMSR, 4), ('MMA-T x2', lambda: MMA_T(upscale=2), 2)):
        times = {p: iteration_time(make, scale, p, device, args.batch, args.lr_size, args.iters) for p in precisions}
        print(f'{name}: ' + '  '.join(f'{p or "fp32"} {t:.3f} s/it ({times[None] / t:.2f}x)' for p, t in times.items()),
              flush=True)


if __name__ == '__main__':
    main()

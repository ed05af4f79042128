"""The model benchmark of the report: DVMSR x4 at 256x256 LR, MMA-T x2 at 128x128, MMA-B x2 at 64x64.

Run: python benchmarks/bench_models.py [--runs N] [--device cpu|cuda]   (one JSON line per model)
Paper figures for DVMSR (RTX 3090, 256x256 LR): 0.424 M params, 20.17 GFLOPs (fvcore), 1094 MB, 48 ms;
compare them with params, flops_fvcore_fused, memory_mb and runtime_ms.
"""
import argparse
import json

import dvmsr_mma  # noqa: F401  (registers the archs)
from dvmsr_mma.tools.bench import benchmark

CONFIGS = [('DVMSR', 4, (256, 256)), ('MMA_T', 2, (128, 128)), ('MMA_B', 2, (64, 64))]

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--device', choices=['cpu', 'cuda'])
    args = parser.parse_args()
    for arch, scale, size in CONFIGS:
        print(json.dumps(benchmark(arch, scale=scale, size=size, device=args.device, runs=args.runs,
                                   warmup=args.warmup)), flush=True)

"""benchmark(): params, FLOPs with the selective scan counted, runtime; ``basicsr bench --json``."""
import json

import torch
from basicsr.archs.srvgg_arch import SRVGGNetCompact

import dvmsr_mma  # noqa: F401
from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.cli import main as cli_main
from dvmsr_mma.tools.bench import benchmark, count_flops


def test_benchmark_mamba_counts_scan():
    torch.manual_seed(0)
    net = DVMSR(embed_dim=8, depths=[1], upscale=2)
    res = benchmark(net, scale=2, size=(8, 8), device='cpu', runs=1, warmup=0)
    assert res['params'] == sum(p.numel() for p in net.parameters())
    assert res['flops'] > res['flops_fvcore'] > 0  # fvcore alone would miss the scan and the causal conv
    assert res['flops_scan'] > 0 and res['flops_conv1d'] > 0
    assert res['flops'] == res['flops_fvcore'] + res['flops_scan'] + res['flops_conv1d']
    assert res['runtime_ms'] > 0 and res['peak_rss_mb'] > 0


def test_scan_formula_one_mixer():
    from dvmsr_mma.archs.mamba_block import Mamba

    class Seq(torch.nn.Module):  # (1, 3, h, w) -> mixer over h*w tokens of width 3
        def __init__(self):
            super().__init__()
            self.m = Mamba(3, d_state=4, d_conv=4, expand=2, dt_rank=1)

        def forward(self, x):
            return self.m(x.flatten(2).transpose(1, 2))

    c = count_flops(Seq(), (4, 5))
    b, d, l, n = 1, 6, 20, 4
    assert c['flops_scan'] == 9 * b * l * d * n + 2 * b * d * l
    assert c['flops_conv1d'] == b * d * l * 4
    assert c['flops_fvcore'] == l * (3 * 12 + 6 * (1 + 8) + 1 * 6 + 6 * 3)  # in_proj, x_proj, dt_proj, out_proj
    assert c['flops_fvcore_fused'] == l * 3 * 12  # only in_proj is outside the fused mamba_inner_fn


def test_conv_net_has_no_scan_flops():
    net = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2)
    c = count_flops(net, (8, 8))
    assert c['flops_scan'] == 0 and c['flops'] == c['flops_fvcore'] > 0
    # first conv alone: 3 -> 4 channels, 3x3, 64 pixels = 6912 multiply-adds
    assert c['flops_fvcore'] >= 3 * 4 * 9 * 64


def test_cli_json(capsys):
    rc = cli_main(['bench', '--arch', 'SRVGGNetCompact', '--scale', '2', '--size', '8x8', '--runs', '1',
                   '--warmup', '0', '--device', 'cpu', '--json'])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res['arch'] == 'SRVGGNetCompact' and res['scale'] == 2 and res['size'] == '8x8'
    assert res['params'] == sum(p.numel() for p in SRVGGNetCompact(upscale=2).parameters())

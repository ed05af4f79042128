"""Inference without BasicSR (what ComfyUI and chaiNNer have): with basicsr and cv2 blocked from import, the
networks build, spandrel loads the released checkpoint layout, ``SRInferencer`` runs it from the weights alone
(``run`` on tensors, ``enhance`` on RGB, gray, RGBA and 16-bit arrays), and a ``basicsr`` command that needs
basicsr says so in one line. One subprocess: the blocker must be in place before anything of the package is
imported."""
import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('spandrel')  # the [spandrel] extra, which make test installs

SCRIPT = textwrap.dedent('''
    import json, sys

    class Blocked:
        """Acts as if basicsr and cv2 were not installed."""
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('basicsr', 'cv2'):
                raise ModuleNotFoundError(f'No module named {name!r}', name=name)

    sys.meta_path.insert(0, Blocked())

    import io, contextlib, numpy as np, torch
    import dvmsr_mma.tools.spandrel, dvmsr_mma.tools.infer
    from dvmsr_mma.archs.dvmsr_arch import DVMSR
    from dvmsr_mma.archs.mma_arch import MMA_T
    from dvmsr_mma.cli import main
    import spandrel

    report = {}
    dvmsr_mma.tools.spandrel.install(ignore_duplicates=True)
    x = torch.rand(1, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    for name, net in (('DVMSR', DVMSR(embed_dim=12, depths=[1, 1], upscale=3)),
                      ('MMA', MMA_T(upscale=2, num_feat=30, num_block=1))):
        torch.manual_seed(1)
        with torch.no_grad():
            for p in net.state_dict().values():
                p.copy_(torch.randn_like(p) * 0.05)
        net.eval()
        path = sys.argv[1] + f'/{name}.pth'
        torch.save({'params': net.state_dict(), 'params_ema': net.state_dict()}, path)  # model_zoo/DVMSR.pth's layout
        with torch.no_grad():
            want = net(x)
        model = spandrel.ModelLoader().load_from_file(path)
        inferencer = dvmsr_mma.tools.infer.SRInferencer(weights=path, device='cpu')
        report[name] = {'id': model.architecture.id, 'scale': model.scale,
                        'spandrel_equal': bool(torch.equal(model(x), want.clamp(0, 1))),
                        'inferencer_equal': bool(torch.equal(inferencer.run(x), want)),
                        'inferencer_scale': inferencer.scale}
    rng = np.random.default_rng(0)
    images = {'rgb': rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), 'gray': rng.integers(0, 256, (9, 7), np.uint8),
              'rgba': rng.integers(0, 256, (9, 7, 4), dtype=np.uint8),
              'rgb16': rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16)}
    for alpha in ('network', 'bicubic'):
        inferencer = dvmsr_mma.tools.infer.SRInferencer(weights=path, device='cpu', alpha=alpha)  # the MMA x2
        for kind, img in images.items():
            out = inferencer.enhance(img)
            report[f'enhance_{kind}_{alpha}'] = [str(out.dtype), list(out.shape)]
    rgb = torch.from_numpy(images['rgb'][:, :, ::-1].transpose(2, 0, 1).copy()).float()[None] / 255
    want = np.rint(inferencer.run(rgb)[0].clamp(0, 1).numpy().transpose(1, 2, 0)[:, :, ::-1] * 255)
    report['enhance_rgb_equal'] = bool((inferencer.enhance(images['rgb']) == want).all())
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        report['train_rc'] = main(['train', '-opt', 'x.yml'])
    report['train_err'] = err.getvalue()
    report['imported'] = sorted({m.split('.')[0] for m in sys.modules} & {'basicsr', 'cv2'})
    print(json.dumps(report))
''')


def test_inference_runs_without_basicsr_and_cv2(tmp_path):
    out = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report['imported'] == []
    assert report['DVMSR'] == {'id': 'DVMSR', 'scale': 3, 'spandrel_equal': True, 'inferencer_equal': True,
                               'inferencer_scale': 3}
    assert report['MMA'] == {'id': 'MMA', 'scale': 2, 'spandrel_equal': True, 'inferencer_equal': True,
                             'inferencer_scale': 2}
    for alpha in ('network', 'bicubic'):
        assert report[f'enhance_rgb_{alpha}'] == ['uint8', [18, 14, 3]]
        assert report[f'enhance_gray_{alpha}'] == ['uint8', [18, 14]]
        assert report[f'enhance_rgba_{alpha}'] == ['uint8', [18, 14, 4]]
        assert report[f'enhance_rgb16_{alpha}'] == ['uint16', [18, 14, 3]]
    assert report['enhance_rgb_equal']
    assert report['train_rc'] == 2
    assert report['train_err'].startswith('basicsr train: error: basicsr is not installed, and this command needs '
                                          'it: pip install --no-build-isolation basicsr==1.4.2')
    assert report['train_err'].count('\n') == 1

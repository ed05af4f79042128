"""The ComfyUI custom node (``ComfyUI-DVMSR-MMA/``), imported as ComfyUI's loader imports a custom node folder,
then a released-layout checkpoint loaded and run as ComfyUI's ``UpscaleModelLoader`` and
``ImageUpscaleWithModel`` do (``torch.load(weights_only=True)`` -> ``ModelLoader().load_from_state_dict``)."""
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import dvmsr_mma  # noqa: F401
from dvmsr_mma.archs.dvmsr_arch import DVMSR

spandrel = pytest.importorskip('spandrel')  # the [spandrel] extra, which make test installs

NODE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'ComfyUI-DVMSR-MMA')


def load_custom_node(module_path):
    """What ComfyUI's ``nodes.load_custom_node`` does with a folder: module name = folder name, its __init__.py
    executed under it; a node package counts when it exports NODE_CLASS_MAPPINGS."""
    name = os.path.basename(module_path)
    spec = importlib.util.spec_from_file_location(name, os.path.join(module_path, '__init__.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_node_loads_like_comfyui_and_makes_its_upscale_nodes_take_dvmsr(tmp_path, caplog, monkeypatch):
    registry = spandrel.ArchRegistry()  # spandrel's main registry as a fresh ComfyUI process has it: no DVMSR
    monkeypatch.setattr('dvmsr_mma.tools.spandrel.MAIN_REGISTRY', registry)
    monkeypatch.delitem(sys.modules, 'ComfyUI-DVMSR-MMA', raising=False)
    torch.manual_seed(0)
    net = DVMSR(embed_dim=8, depths=[1], upscale=2).eval()
    torch.save({'params': net.state_dict(), 'params_ema': net.state_dict()}, tmp_path / 'DVMSR.pth')
    state = torch.load(tmp_path / 'DVMSR.pth', map_location='cpu', weights_only=True)
    with pytest.raises(spandrel.UnsupportedModelError):
        spandrel.ModelLoader(registry=registry).load_from_state_dict(state)  # what users saw without the node

    with caplog.at_level(logging.INFO):
        module = load_custom_node(NODE_DIR)
        load_custom_node(NODE_DIR)  # a second load (ComfyUI reloading) is no error
    assert module.NODE_CLASS_MAPPINGS == {} and module.NODE_DISPLAY_NAME_MAPPINGS == {}
    lines = [r.getMessage() for r in caplog.records if r.name == 'dvmsr_mma.tools.comfyui']
    assert lines == [f'dvmsr_mma {dvmsr_mma.__version__}: spandrel loads DVMSR and MMA checkpoints now '
                     '(Load Upscale Model)'] * 2

    model = spandrel.ModelLoader(registry=registry).load_from_state_dict(state).eval()
    assert isinstance(model, spandrel.ImageModelDescriptor) and model.architecture.id == 'DVMSR'
    image = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(1))  # ComfyUI's upscale node: (b, c, h, w)
    with torch.no_grad():
        assert torch.equal(model(image), net(image).clamp(0, 1))


def node_version():
    with open(os.path.join(NODE_DIR, 'pyproject.toml'), encoding='utf-8') as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


def test_node_version_is_the_packages_and_it_asks_no_index_for_the_package():
    """The registry's version follows dvmsr_mma.__version__; neither requirements.txt (what ComfyUI-Manager runs
    ``pip install`` on, line by line) nor the registry's dependencies name dvmsr_mma, which no index has."""
    assert node_version() == dvmsr_mma.__version__
    with open(os.path.join(NODE_DIR, 'requirements.txt'), encoding='utf-8') as f:
        lines = [line.strip() for line in f if line.strip()]
    assert lines == ['spandrel']  # no comment lines: old ComfyUI-Manager versions pip install every line
    with open(os.path.join(NODE_DIR, 'pyproject.toml'), encoding='utf-8') as f:
        dependencies = re.search(r'^dependencies = (\[.*\])$', f.read(), re.M).group(1)
    assert 'dvmsr' not in dependencies.lower()


@pytest.mark.parametrize('path', ['ComfyUI-DVMSR-MMA/README.md', 'docs/export.md'])
def test_quoted_start_up_line_has_the_current_version(path):
    with open(os.path.join(os.path.dirname(NODE_DIR), path), encoding='utf-8') as f:
        quoted = re.findall(r'`dvmsr_mma (\d+\.\d+\.\d+): spandrel loads', f.read())
    assert quoted and set(quoted) == {dvmsr_mma.__version__}


MISSING = textwrap.dedent('''
    import importlib.util, json, logging, os, sys

    class Blocked:
        """Acts as if the dvmsr_mma package were not installed."""
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] == 'dvmsr_mma':
                raise ModuleNotFoundError(f'No module named {name!r}', name=name)

    sys.meta_path.insert(0, Blocked())
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    node_dir, checkpoints = sys.argv[1], sys.argv[2:]
    spec = importlib.util.spec_from_file_location('ComfyUI-DVMSR-MMA', os.path.join(node_dir, '__init__.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules['ComfyUI-DVMSR-MMA'] = module
    spec.loader.exec_module(module)  # ComfyUI's load_custom_node: an exception here is "IMPORT FAILED"

    import spandrel, torch
    report = {'mappings': module.NODE_CLASS_MAPPINGS}
    for path in checkpoints:
        state = torch.load(path, map_location='cpu', weights_only=True)  # what UpscaleModelLoader does
        try:
            spandrel.ModelLoader().load_from_state_dict(state)
            report[os.path.basename(path)] = 'loaded'
        except Exception as err:
            report[os.path.basename(path)] = f'{type(err).__name__}: {err}'
    print(json.dumps(report))
''')


def test_without_the_package_a_workflow_says_what_to_install(tmp_path):
    """The folder loads without dvmsr_mma (a warning at start-up); loading a DVMSR or MMA checkpoint then fails with
    the install line, not spandrel's empty UnsupportedModelError, and other checkpoints are left to spandrel."""
    from dvmsr_mma.archs.mma_arch import MMA_T
    torch.manual_seed(0)
    dvmsr = DVMSR(embed_dim=8, depths=[1], upscale=2).state_dict()
    torch.save({'params': dvmsr, 'params_ema': dvmsr}, tmp_path / 'DVMSR.pth')
    torch.save({'params': MMA_T(upscale=2, num_feat=30, num_block=1).state_dict()}, tmp_path / 'MMA.pth')
    torch.save({'params': {'conv.weight': torch.zeros(3, 3, 3, 3)}}, tmp_path / 'other.pth')
    out = subprocess.run([sys.executable, '-c', MISSING, NODE_DIR, *(str(tmp_path / n) for n in
                                                                     ('DVMSR.pth', 'MMA.pth', 'other.pth'))],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report['mappings'] == {}
    install = 'is not installed in ComfyUI\'s Python (No module named \'dvmsr_mma'
    for arch in ('DVMSR', 'MMA'):
        assert report[f'{arch}.pth'].startswith(f'PackageMissing: ComfyUI-DVMSR-MMA: this is a {arch} checkpoint, '
                                                'and the dvmsr_mma package')
        assert install in report[f'{arch}.pth'] and f'"{sys.executable}" -m pip install' in report[f'{arch}.pth']
    assert report['other.pth'].startswith('UnsupportedModelError')
    warnings = [line for line in out.stderr.splitlines() if line.startswith('WARNING ComfyUI-DVMSR-MMA:')]
    assert len(warnings) == 1 and install in warnings[0]

"""The ComfyUI custom node (``ComfyUI-DVMSR-MMA/``), imported as ComfyUI's loader imports a custom node folder,
then a released-layout checkpoint loaded and run as ComfyUI's ``UpscaleModelLoader`` and
``ImageUpscaleWithModel`` do (``torch.load(weights_only=True)`` -> ``ModelLoader().load_from_state_dict``)."""
import importlib.util
import logging
import os
import sys

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

"""spandrel support (what chaiNNer and ComfyUI load models with): ``ArchSupport`` entries for DVMSR and MMA.

``dvmsr_mma.tools.spandrel.install()`` adds them to spandrel's ``MAIN_REGISTRY`` (the ``spandrel_extra_arches``
pattern), after which ``spandrel.ModelLoader().load_from_file('DVMSR.pth')`` returns an ``ImageModelDescriptor``.
spandrel unwraps ``params_ema`` / ``params`` itself, so both released DVMSR layouts (``model_zoo/DVMSR.pth``,
``team07_DVMSR.pth`` with the weights at the top level) and BasicSR's ``net_g_<iter>.pth`` load; the flat
``net_g_<iter>.safetensors`` this package's training writes (``params_ema.<name>``, ``params.<name>``) is
unwrapped here.

Every hyperparameter the weights fix is read from the tensor shapes by :mod:`dvmsr_mma.tools.detect` (the detection
``basicsr infer --weights W`` uses without ``--arch``). Both networks take any input size
and run in float16 and bfloat16 (the scan keeps an fp32 state on every path), so there are no size requirements
and both precisions are supported. Tiling is discouraged, as spandrel marks SwinIR: a scan sees the whole tile.
"""
from typing import Any, List, Mapping

try:
    from spandrel import MAIN_REGISTRY, Architecture, ArchRegistry, ArchSupport, ImageModelDescriptor, ModelTiling
except ImportError as err:
    raise ImportError("dvmsr_mma.tools.spandrel needs the spandrel package: pip install 'dvmsr_mma[spandrel]'") from err

from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.archs.mma_arch import MMA
from dvmsr_mma.tools.detect import detect, is_dvmsr, is_mma, unflattened
from dvmsr_mma.tools.weights import state_dict_mismatch

__all__ = ['DVMSRArch', 'MMAArch', 'REGISTRY', 'install']


def _descriptor(arch: Architecture, state: Mapping[str, Any]) -> ImageModelDescriptor:
    """The network :func:`~dvmsr_mma.tools.detect.detect` reads from the shapes, after checking it fits the weights
    (one line, not torch's key list)."""
    state = unflattened(state)
    found = detect(state)
    model = found.build()
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(f'{arch.id}: the weights do not fit the network rebuilt from their shapes: {mismatch}')
    return ImageModelDescriptor(model, dict(state), architecture=arch,
                                purpose='SR' if found.scale > 1 else 'Restoration', tags=found.tags,
                                supports_half=True, supports_bfloat16=True, scale=found.scale,
                                input_channels=found.in_channels, output_channels=found.out_channels,
                                tiling=ModelTiling.DISCOURAGED)


class DVMSRArch(Architecture[DVMSR]):
    """DVMSR (NTIRE 2024 ESR): RSSBs of unidirectional (or, ``bimamba_type: v2``, bidirectional) ViMMs."""

    def __init__(self) -> None:
        super().__init__(id='DVMSR', detect=is_dvmsr)

    def load(self, state_dict: Mapping[str, Any]) -> ImageModelDescriptor[DVMSR]:
        return _descriptor(self, state_dict)


class MMAArch(Architecture[MMA]):
    """MMA (MMA-B, MMA-T and any other width / depth): MetaFormer blocks with a bidirectional Vim mixer."""

    def __init__(self) -> None:
        super().__init__(id='MMA', detect=is_mma)

    def load(self, state_dict: Mapping[str, Any]) -> ImageModelDescriptor[MMA]:
        return _descriptor(self, state_dict)


REGISTRY = ArchRegistry()
REGISTRY.add(ArchSupport.from_architecture(DVMSRArch()), ArchSupport.from_architecture(MMAArch()))


def install(*, ignore_duplicates: bool = False) -> List[ArchSupport]:
    """Add DVMSR and MMA to spandrel's main registry (what ``ModelLoader()`` uses); returns the ``ArchSupport``
    entries added (their ids: ``entry.architecture.id``, 'DVMSR' and 'MMA').
    ``ignore_duplicates``: calling it twice is not an error (the entries already there are kept)."""
    return MAIN_REGISTRY.add(*REGISTRY, ignore_duplicates=ignore_duplicates)

"""Small helpers shared by the package's sub-packages."""
import importlib
import importlib.util
import pkgutil
from types import ModuleType
from typing import List


def import_suffixed_modules(package: str, path: List[str], suffix: str) -> List[ModuleType]:
    """Import every module of ``package`` whose name ends with ``suffix``, as BasicSR does for its
    ``*_arch.py`` / ``*_model.py`` files, so that their registry decorators run."""
    names = sorted(info.name for info in pkgutil.iter_modules(path) if info.name.endswith(suffix))
    return [importlib.import_module(f'{package}.{name}') for name in names]


def basicsr_importable() -> bool:
    """Whether basicsr is installed, without importing it (3 s cold, with cv2): an inference-only install
    (ComfyUI, chaiNNer) has none, and then nothing registers into BasicSR's registries."""
    try:
        return importlib.util.find_spec('basicsr') is not None
    except (ImportError, ValueError):  # a finder that refuses it; a half-imported module without __spec__
        return False

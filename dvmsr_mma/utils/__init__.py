"""Small helpers shared by the package's sub-packages."""
import importlib
import pkgutil
from types import ModuleType
from typing import List


def import_suffixed_modules(package: str, path: List[str], suffix: str) -> List[ModuleType]:
    """Import every module of ``package`` whose name ends with ``suffix``, as BasicSR does for its
    ``*_arch.py`` / ``*_model.py`` files, so that their registry decorators run."""
    names = sorted(info.name for info in pkgutil.iter_modules(path) if info.name.endswith(suffix))
    return [importlib.import_module(f'{package}.{name}') for name in names]

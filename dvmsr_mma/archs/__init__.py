"""Networks; every ``*_arch.py`` module here registers into BasicSR's ``ARCH_REGISTRY`` on import."""
from dvmsr_mma.utils import import_suffixed_modules

_arch_modules = import_suffixed_modules(__name__, __path__, '_arch')

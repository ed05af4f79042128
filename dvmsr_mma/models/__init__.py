"""Training models; every ``*_model.py`` module here registers into BasicSR's ``MODEL_REGISTRY`` on import."""
from dvmsr_mma.utils import import_suffixed_modules

_model_modules = import_suffixed_modules(__name__, __path__, '_model')

"""Datasets; every ``*_dataset.py`` module here registers into BasicSR's ``DATASET_REGISTRY`` on import."""
from dvmsr_mma.utils import import_suffixed_modules

_dataset_modules = import_suffixed_modules(__name__, __path__, '_dataset')

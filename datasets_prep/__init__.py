"""Dataset preparation for BasicSR training, one module per step (``python -m datasets_prep --help``).

``extract_subimages`` (crop DIV2K/DF2K into sub-images) -> ``make_lr`` (MATLAB-bicubic LR) ->
``make_lmdb`` (folder -> LMDB) -> ``verify`` (LMDB decodes; HR/LR pair up); ``benchmark`` arranges
Set5/Set14/B100/Urban100/Manga109 into ``datasets/benchmark/<Set>/{HR,LR_bicubic/X<s>}``.
Each function returns a ``Summary`` whose ``str()`` is the one-line summary; bad input raises ``PrepError``.
"""
import importlib
import sys
import types

from datasets_prep.common import PrepError, Summary

# name -> module: imported on first use, so that ``datasets_prep.common`` (which inference uses) needs no cv2
_LAZY = {'VerifyError': 'verify', 'verify_lmdb': 'verify', 'extract_subimages': 'extract_subimages',
         'make_lmdb': 'make_lmdb', 'make_lr': 'make_lr', 'arrange_benchmark': 'benchmark'}

__all__ = ['PrepError', 'VerifyError', 'Summary', 'extract_subimages', 'make_lr', 'make_lmdb', 'verify_lmdb',
           'arrange_benchmark']


class _Steps(types.ModuleType):
    """The package, with each step function looked up in its module on every access: a function shares its
    module's name (``make_lr`` in ``make_lr.py``), and importing the module makes Python set the package attribute
    of that name to the module, which a module-level ``__getattr__`` would then never see."""

    def __getattribute__(self, name: str):
        if name in _LAZY:
            return getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _Steps

"""Dataset preparation for BasicSR training, one module per step (``python -m datasets_prep --help``).

``extract_subimages`` (crop DIV2K/DF2K into sub-images) -> ``make_lr`` (MATLAB-bicubic LR) ->
``make_lmdb`` (folder -> LMDB) -> ``verify`` (LMDB decodes; HR/LR pair up); ``benchmark`` arranges
Set5/Set14/B100/Urban100/Manga109 into ``datasets/benchmark/<Set>/{HR,LR_bicubic/X<s>}``.
Each function returns a ``Summary`` whose ``str()`` is the one-line summary; bad input raises ``PrepError``.
"""
from datasets_prep.benchmark import arrange_benchmark
from datasets_prep.common import PrepError, Summary
from datasets_prep.extract_subimages import extract_subimages
from datasets_prep.make_lmdb import make_lmdb
from datasets_prep.make_lr import make_lr
from datasets_prep.verify import VerifyError, verify_lmdb

__all__ = ['PrepError', 'VerifyError', 'Summary', 'extract_subimages', 'make_lr', 'make_lmdb', 'verify_lmdb',
           'arrange_benchmark']

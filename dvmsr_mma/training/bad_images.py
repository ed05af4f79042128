"""A sample whose image does not decode is logged once and replaced (training) or left out (validation, testing);
too many stop the run.

BasicSR 1.4.2 decodes with ``imfrombytes``, which returns ``cv2.imdecode``'s ``None`` for a truncated, empty or
non-image file, and the dataset dies on ``None.astype`` (an LMDB key that is missing dies in ``np.frombuffer``):
on DF2K's ~100k sub-images one damaged file ends a multi-day run at a random iteration. Here:

- ``FileClient.get`` remembers the path (or LMDB key) it read, and an LMDB key without a value, a file that
  cannot be opened or bytes that do not decode raise :class:`BadImage` naming it;
- each built dataset is wrapped in :class:`TolerantDataset`: a sample that raises ``BadImage`` is logged once
  (WARNING, with the path and why). In training the sample ``index + k * 7919`` (k = 1, 2, ...) is taken instead:
  no random number is drawn, so a run without a bad image is bit-identical to one without the wrapper, and exact
  resume holds. In validation and testing the image is left out (:class:`SkippingLoader`): another sample would
  count one image twice in the metrics; the log says over how many images they are averaged;
- when more than ``datasets.<phase>.max_bad_share`` (default 1%) of a training set's files proved bad, or none of a
  validation set's, the run stops with one line: training saves its state as on SIGTERM (the last finished
  iteration) and exits 1.

Images that decode are converted as ``imfrombytes`` converts them (``IMREAD_COLOR``: grayscale to 3 channels,
RGBA without alpha, 16-bit to 8-bit, CMYK JPEG to BGR), so mixed folders train as they do in BasicSR.
With DataLoader workers, each worker process logs and counts the files it read.
"""
import functools
import weakref
from typing import Any, Callable, Dict, Optional

import cv2
from torch.utils.data import Dataset

from dvmsr_mma.tools.image_io import ImageReadError, decode
from dvmsr_mma.utils.errors import OptionError, TrainingStopped

DEFAULT_MAX_BAD_SHARE = 0.01
STRIDE = 7919  # a prime: the replacements of one index walk the whole dataset before repeating
_last_read: Dict[str, Optional[str]] = {'path': None}
_run: Dict[str, Any] = {'model': None, 'iter': None}  # a weak reference: the run owns its model, not this module


class BadImage(OptionError):
    """One sample's image cannot be read; the message is ``<path or LMDB key>: <why>``."""


_UNREADABLE: Dict[type, type] = {}


def _unreadable(err: OSError, name: str) -> BadImage:
    """A :class:`BadImage` that is also the ``OSError`` subclass upstream raised (``FileNotFoundError``...), so code
    that catches BasicSR's exception still does."""
    kind = type(err)
    if kind not in _UNREADABLE:
        _UNREADABLE[kind] = type(f'BadImage{kind.__name__}', (BadImage, kind), {'__str__': BaseException.__str__})
    return _UNREADABLE[kind](f'{name}: cannot be read ({err.strerror or err})')


class TooManyBadImages(TrainingStopped):
    """More than ``max_bad_share`` of a dataset's files are bad; the message is the one line to print."""


def _getting(get: Callable) -> Callable:
    """``FileClient.get`` that remembers what it read and raises :class:`BadImage` where there is nothing."""

    @functools.wraps(get)
    def wrapper(self, filepath, client_key='default'):
        name = str(filepath)
        _last_read['path'] = name
        try:
            value = get(self, filepath, client_key)
        except OSError as err:
            raise _unreadable(err, name) from None
        if value is None:  # LmdbBackend: txn.get of a key that is not there
            raise BadImage(f'{name}: no such key in the LMDB ({client_key})')
        return value

    return wrapper


def _decoding(imfrombytes: Callable) -> Callable:
    """BasicSR's ``imfrombytes``, raising :class:`BadImage` with the path last read where it gives no image."""

    @functools.wraps(imfrombytes)
    def wrapper(content, flag='color', float32=False):
        flags = {'color': cv2.IMREAD_COLOR, 'grayscale': cv2.IMREAD_GRAYSCALE, 'unchanged': cv2.IMREAD_UNCHANGED}
        try:
            img = imfrombytes(content, flag, float32)
        except (AttributeError, TypeError, ValueError, cv2.error):  # None.astype, an empty buffer
            img = None
        if img is None:
            try:  # decode again only to say why
                decode(bytes(content or b''), _last_read['path'] or 'an image', flags[flag])
            except ImageReadError as err:
                raise BadImage(str(err)) from None
            raise BadImage(f'{_last_read["path"]}: not a readable image')
        return img

    return wrapper


BAD_SAMPLE = 'bad_image'  # the key of what a skipping dataset returns for a bad image: {BAD_SAMPLE: message}


class TolerantDataset(Dataset):
    """``dataset`` whose samples with a :class:`BadImage` are replaced by others, or with ``skip`` (validation,
    testing) marked as ``{BAD_SAMPLE: message}`` for :class:`SkippingLoader` to leave out."""

    def __init__(self, dataset: Dataset, where: str, max_bad_share: float, skip: bool = False):
        self.dataset, self.where, self.max_bad_share, self.skip = dataset, where, max_bad_share, skip
        self.bad: Dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:  # opt, paths, file_client...: BasicSR reads dataset attributes
        if name == 'dataset':  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        size = len(self.dataset)
        if self.skip:
            try:
                return self.dataset[index]
            except BadImage as err:
                self._record(str(err), size)
                return {BAD_SAMPLE: str(err)}
        for attempt in range(size):
            try:
                return self.dataset[(index + attempt * STRIDE) % size]
            except BadImage as err:
                self._record(str(err), size)
        raise TooManyBadImages(f'{self.where}: no image of the dataset can be read')

    def _record(self, message: str, size: int) -> None:
        from basicsr.utils import get_root_logger

        key = message.split(': ', 1)[0]
        if key in self.bad:
            return
        self.bad[key] = message
        instead = 'it is left out of the metrics' if self.skip else 'another sample is drawn'
        get_root_logger().warning(f'{self.where}: skipping a bad image, {instead}: {message}')
        if not self.skip and len(self.bad) > self.max_bad_share * size:
            line = (f'{self.where}: {len(self.bad)} of its {size} samples have bad images, more than max_bad_share '
                    f'{self.max_bad_share:g}; e.g. {message}; check the data with basicsr prep verify --input '
                    '<folder>, or raise max_bad_share')
            get_root_logger().error(line)
            raise TooManyBadImages(line)


class SkippingLoader:
    """A validation or test DataLoader without the samples a skipping :class:`TolerantDataset` marked bad (BasicSR
    loads them one at a time and averages its metrics over the batches it was given); at the end of a pass with
    bad images, one line says over how many images the metrics are."""

    def __init__(self, loader: Any, where: str):
        self.loader, self.where = loader, where

    def __getattr__(self, name: str) -> Any:  # dataset, sampler...: BasicSR reads loader attributes
        if name == 'loader':
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        from basicsr.utils import get_root_logger

        total = skipped = 0
        for batch in self.loader:
            total += 1
            if isinstance(batch, dict) and BAD_SAMPLE in batch:
                skipped += 1
                continue
            yield batch
        if skipped == total > 0:
            line = f'{self.where}: none of its {total} images can be read; check them with basicsr prep verify'
            get_root_logger().error(line)
            raise TooManyBadImages(line)
        if skipped:
            get_root_logger().warning(f'{self.where}: the metrics are averages over {total - skipped} of {total} '
                                      f'images ({skipped} left out: bad images)')


def _where(dataset_opt: Dict[str, Any]) -> str:
    return f'datasets.{dataset_opt.get("phase", "")}:{dataset_opt.get("name")}'


def _building(build_dataset: Callable) -> Callable:
    @functools.wraps(build_dataset)
    def wrapper(dataset_opt):
        dataset = build_dataset(dataset_opt)
        share = dataset_opt.get('max_bad_share')
        share = DEFAULT_MAX_BAD_SHARE if share is None else share
        return TolerantDataset(dataset, _where(dataset_opt), share, skip=dataset_opt.get('phase') != 'train')

    return wrapper


def _loading(build_dataloader: Callable) -> Callable:
    """``build_dataloader`` whose validation and test loaders leave out the bad samples."""

    @functools.wraps(build_dataloader)
    def wrapper(dataset, dataset_opt, *args, **kwargs):
        loader = build_dataloader(dataset, dataset_opt, *args, **kwargs)
        skip = isinstance(dataset, TolerantDataset) and dataset.skip
        return SkippingLoader(loader, _where(dataset_opt)) if skip else loader

    return wrapper


def _remembering(build_model: Callable) -> Callable:
    """``build_model`` whose training model's finished iterations are remembered, to save them on a stop."""

    @functools.wraps(build_model)
    def wrapper(opt):
        model = build_model(opt)
        if opt.get('is_train'):
            _run.update(model=weakref.ref(model), iter=None)
            optimize = model.optimize_parameters

            @functools.wraps(optimize)
            def optimize_parameters(current_iter, *args, **kwargs):
                result = optimize(current_iter, *args, **kwargs)
                _run['iter'] = current_iter
                return result

            model.optimize_parameters = optimize_parameters
        return model

    return wrapper


def one_line(err: BaseException) -> str:
    """The message of a :class:`TooManyBadImages`, also when a DataLoader worker's traceback is wrapped around it."""
    lines = str(err).strip().splitlines()
    last = lines[-1] if lines else type(err).__name__
    return last.split('TooManyBadImages: ', 1)[-1]


def _stopping_on_bad_images(train_pipeline: Callable) -> Callable:
    @functools.wraps(train_pipeline)
    def wrapper(*args, **kwargs):
        try:
            return train_pipeline(*args, **kwargs)
        except TooManyBadImages as err:
            raise _stopped(one_line(err)) from None

    return wrapper


def _stopped(message: str) -> TooManyBadImages:
    """Save the last finished iteration as a SIGTERM would (rank 0 writes) and return the stop to raise (its line
    was logged where it was found)."""
    from basicsr.utils import get_root_logger

    from dvmsr_mma.training.resume import current_epoch

    model, current_iter = _run['model'] and _run['model'](), _run['iter']
    if model is not None and current_iter is not None:
        model.save(current_epoch(), current_iter)
        get_root_logger().warning(f'saved the training state of iter {current_iter}; continue with --auto_resume '
                                  'once the data are fixed')
    return TooManyBadImages(message)


def install() -> None:
    """Hook into BasicSR's reading, dataset building and train pipeline (called by ``compat.apply``, last)."""
    import sys

    import basicsr.test
    import basicsr.train
    from basicsr.utils import file_client, img_util

    file_client.FileClient.get = _getting(file_client.FileClient.get)
    original = img_util.imfrombytes
    patched = _decoding(original)
    for module in list(sys.modules.values()):  # datasets bind imfrombytes by name at import
        if getattr(module, 'imfrombytes', None) is original:
            module.imfrombytes = patched
    basicsr.train.build_dataset = _building(basicsr.train.build_dataset)
    basicsr.test.build_dataset = _building(basicsr.test.build_dataset)
    basicsr.train.build_dataloader = _loading(basicsr.train.build_dataloader)
    basicsr.test.build_dataloader = _loading(basicsr.test.build_dataloader)
    basicsr.train.build_model = _remembering(basicsr.train.build_model)
    basicsr.train.train_pipeline = _stopping_on_bad_images(basicsr.train.train_pipeline)

"""Exact resume: a run resumed after a kill goes on as if it had never stopped.

BasicSR's training state holds the networks' optimizers, schedulers, epoch and iteration, but on resume it
re-seeds every random generator and starts the interrupted epoch again from its first batch: the resumed
run sees other crops, flips and images than the uninterrupted one would have. Here the training state also
records the random generators (python, numpy, torch) and the number of batches per epoch; on resume the
sampler skips the batches the interrupted epoch already used and the generators are restored just before the
next batch is drawn. Validation runs on copies of the generators so it never shifts the training stream.

An fp16 run's GradScaler state (``train.amp: fp16``) is part of the training state as well.

Exact means bit-identical on CPU with a fixed seed and ``num_worker_per_gpu: 0`` (loader workers re-seed
themselves) in a single process (only rank 0 writes the state, so other ranks restart their generators).
"""
import contextlib
import functools
import itertools
import os.path as osp
import random
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from basicsr.data.data_sampler import EnlargedSampler

from dvmsr_mma.utils.checkpoint_io import atomic_torch_save

_train_run: Dict[str, Any] = {}  # the train loader of the run in this process: sampler, batch size, batches/epoch


def rng_state() -> Dict[str, Any]:
    """The states of every random generator the training loop draws from."""
    return {
        'python': random.getstate(),
        'numpy': np.random.get_state(),
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (validation) without moving the random generators of the training stream."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


class ResumableSampler(EnlargedSampler):
    """BasicSR's ``EnlargedSampler`` that, in the first epoch after a resume, skips the samples the interrupted
    epoch already used and restores the random generators right before the first sample is loaded (after the
    data loader has drawn its own seed, as it did in the uninterrupted run)."""

    _resume: Optional[tuple] = None

    def resume_from(self, skip: int, rng: Optional[Dict[str, Any]]) -> None:
        self._resume = (skip, rng)

    def __iter__(self):
        indices = super().__iter__()
        if self._resume is None:
            return indices
        (skip, rng), self._resume = self._resume, None
        if rng is not None:
            set_rng_state(rng)
        return itertools.islice(indices, skip, None)


def training_state(model: Any, epoch: int, current_iter: int) -> Dict[str, Any]:
    """BasicSR's training state plus what exact resume needs (``rng``, ``iters_per_epoch``, an fp16 run's
    ``grad_scaler``)."""
    state = {
        'epoch': epoch,
        'iter': current_iter,
        'optimizers': [o.state_dict() for o in model.optimizers],
        'schedulers': [s.state_dict() for s in model.schedulers],
        'rng': rng_state(),
        'iters_per_epoch': _train_run.get('iters_per_epoch'),
    }
    scaler = getattr(model, 'grad_scaler', None)
    if scaler is not None and scaler.is_enabled():
        state['grad_scaler'] = scaler.state_dict()
    return state


def current_epoch() -> int:
    """The epoch the train sampler of this process's run is in (BasicSR sets it at each epoch's start)."""
    return _train_run['sampler'].epoch


def save_training_state(self, epoch: int, current_iter: int) -> None:
    """Replacement for ``BaseModel.save_training_state``: :func:`training_state`, written atomically."""
    if current_iter != -1:
        path = osp.join(self.opt['path']['training_states'], f'{current_iter}.state')
        atomic_torch_save(training_state(self, epoch, current_iter), path)


def restore_position(state: Dict[str, Any]) -> None:
    """Have the train sampler continue the interrupted epoch where the state was saved."""
    from basicsr.utils import get_root_logger

    sampler, per_epoch = _train_run.get('sampler'), _train_run.get('iters_per_epoch')
    if sampler is None:  # resume_training outside basicsr's train pipeline
        return
    done = state['iter'] - state['epoch'] * per_epoch  # BasicSR's epochs always run per_epoch iterations
    restart = f"epoch {state['epoch']} starts again from its first batch, with fresh random generators."
    if 'iters_per_epoch' not in state:
        get_root_logger().warning(f"Resume state of iter {state['iter']} has no sampler position (written by "
                                  f'BasicSR itself): {restart}')
        return
    if state['iters_per_epoch'] != per_epoch or not 0 <= done <= per_epoch:
        get_root_logger().warning(
            f"Resume state of iter {state['iter']} was written with {state['iters_per_epoch']} iterations per "
            f'epoch, this run has {per_epoch} (other batch size, dataset or world size?): {restart}')
        return
    if _train_run['world_size'] > 1:  # the state holds rank 0's generators only
        sampler.resume_from(done * _train_run['batch_size'], None)
    else:
        sampler.resume_from(done * _train_run['batch_size'], state.get('rng'))


def _registering(create_train_val_dataloader):
    """Wrap ``basicsr.train.create_train_val_dataloader`` to note the train loader's sampler and sizes."""

    @functools.wraps(create_train_val_dataloader)
    def wrapper(opt, logger):
        result = create_train_val_dataloader(opt, logger)
        train_loader, train_sampler = result[0], result[1]
        _train_run.clear()
        _train_run.update(sampler=train_sampler, iters_per_epoch=len(train_loader),
                          batch_size=train_loader.batch_size, world_size=opt['world_size'])
        return result

    return wrapper


def _resuming(resume_training):

    @functools.wraps(resume_training)
    def wrapper(self, resume_state):
        resume_training(self, resume_state)
        scaler = getattr(self, 'grad_scaler', None)
        if scaler is not None and scaler.is_enabled() and 'grad_scaler' in resume_state:
            scaler.load_state_dict(resume_state['grad_scaler'])
        restore_position(resume_state)

    return wrapper


def _rng_neutral(validation):

    @functools.wraps(validation)
    def wrapper(*args, **kwargs):
        with preserved_rng():
            return validation(*args, **kwargs)

    return wrapper


def install() -> None:
    """Hook exact resume into BasicSR's train pipeline and ``BaseModel`` (called by ``compat.apply``)."""
    import basicsr.train
    from basicsr.models.base_model import BaseModel
    from basicsr.utils.dist_util import master_only

    basicsr.train.EnlargedSampler = ResumableSampler
    basicsr.train.create_train_val_dataloader = _registering(basicsr.train.create_train_val_dataloader)
    BaseModel.save_training_state = master_only(save_training_state)
    BaseModel.resume_training = _resuming(BaseModel.resume_training)
    BaseModel.validation = _rng_neutral(BaseModel.validation)

"""State on SIGTERM/SIGINT: a preempted or interrupted run saves where it is, then stops.

Slurm preempts a job (or reaches its time limit) with SIGTERM, then SIGKILL after a grace period; torchrun
passes a SIGTERM on to its ranks; Ctrl-C is SIGINT. While BasicSR's ``train_pipeline`` runs, the first of these
signals only sets a flag. The current iteration finishes; right after its ``optimize_parameters`` the model
saves its networks and training state (atomically, as every save here) for that iteration, the line naming
them is logged, and :class:`~dvmsr_mma.utils.errors.TrainingInterrupted` ends the run with exit code 128 + signal.
The state is the one a periodic save at that iteration would have written (nothing draws a random number in
between), so ``--auto_resume`` goes on bit-identically (:mod:`dvmsr_mma.training.resume`). A second signal ends the
process at once, as the signal itself would.

Distributed runs: each iteration the ranks agree (one all-reduce of one number) on whether any of them got a
signal, so all stop after the same iteration even when only one was signalled; rank 0 writes, the others wait
for it before they exit (a rank that exits early makes torchrun kill the rest, rank 0 mid-save included). The
process group the run opened is closed when it ends, stopped or finished (:func:`close_process_group`).
Forked DataLoader workers inherit the handler and ignore the signal: the main process decides.
"""
import contextlib
import functools
import gc
import glob
import os
import os.path as osp
import signal
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist

from dvmsr_mma.utils.errors import TrainingInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_armed: Dict[str, Optional[int]] = {'pid': None}  # the process whose handlers are installed
_received: List[int] = []


def _handle(signum: int, frame: Any) -> None:
    if os.getpid() != _armed['pid']:  # a forked DataLoader worker: the main process stops the run
        return
    if _received:  # the second signal: exit at once
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _received.append(signum)
    os.write(2, f'\n{signal.Signals(signum).name}: finishing this iteration, then saving the training state '
                '(send it again to exit at once)\n'.encode())


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """SIGTERM/SIGINT handlers for the block (the main thread only; elsewhere signals keep their handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _armed['pid'] = os.getpid()
    previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _armed['pid'] = None
        _received.clear()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agreed_signal(device: torch.device) -> int:
    """The signal any rank has received (0: none), the same on every rank."""
    local = _received[0] if _received else 0
    if not _distributed():
        return local
    value = torch.tensor([local], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def save_and_stop(model: Any, current_iter: int, signum: int) -> None:
    """Save ``model`` at ``current_iter`` (rank 0), wait for it on every rank, log where, raise."""
    from basicsr.utils import get_root_logger

    from dvmsr_mma.training.resume import current_epoch

    model.save(current_epoch(), current_iter)
    if _distributed():
        dist.barrier()
    path = model.opt['path']
    networks = sorted(glob.glob(osp.join(glob.escape(path['models']), f'*_{current_iter}.*')))
    message = (f'{signal.Signals(signum).name}: stopped after iter {current_iter}; saved the training state '
               f'{osp.join(path["training_states"], f"{current_iter}.state")} and {", ".join(networks)}; '
               'continue with --auto_resume')
    get_root_logger().warning(message)
    raise TrainingInterrupted(message, signum)


def _stop_after(model: Any, optimize_parameters: Callable) -> Callable:
    """``model.optimize_parameters``, then saving and stopping once a signal was agreed on."""

    @functools.wraps(optimize_parameters)
    def wrapper(current_iter, *args, **kwargs):
        result = optimize_parameters(current_iter, *args, **kwargs)
        if _armed['pid'] is not None:
            signum = agreed_signal(model.device)
            if signum:
                save_and_stop(model, current_iter, signum)
        return result

    return wrapper


def _stopping(build_model: Callable) -> Callable:
    """``basicsr.train.build_model`` whose training models stop on a signal (any model class: the instance's
    ``optimize_parameters`` is wrapped, the class is untouched)."""

    @functools.wraps(build_model)
    def wrapper(opt):
        model = build_model(opt)
        if opt.get('is_train'):
            model.optimize_parameters = _stop_after(model, model.optimize_parameters)
        return model

    return wrapper


def _with_handlers(train_pipeline: Callable) -> Callable:
    """``train_pipeline`` with the handlers, closing the process group that the run opened (``--launcher``)."""

    @functools.wraps(train_pipeline)
    def wrapper(*args, **kwargs):
        opened_here = not (dist.is_available() and dist.is_initialized())
        together = False
        try:
            with handling():
                result = train_pipeline(*args, **kwargs)
            together = True
            return result
        except TrainingInterrupted:
            together = True
            raise
        finally:
            if opened_here:
                close_process_group(together)

    return wrapper


def close_process_group(together: bool) -> None:
    """Close the process group a run opened, before the interpreter exits. Left to exit, a rank could abort in
    gloo's teardown ("terminate called without an active exception", exit -6) after a finished run: objects of the
    DDP wrappers that hold gloo's work were destroyed while the interpreter was being torn down. So the run's
    objects are collected first (the model is in reference cycles), then the group is closed.
    ``together``: every rank got here the same way (the run finished, or a signal was agreed on), so they meet once
    more first; after an error on one rank, a barrier could wait for a peer that never comes. A group the caller
    opened before the run is not this package's to close."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if together:
        dist.barrier()
    dist.destroy_process_group()


def install() -> None:
    """Hook the handlers into BasicSR's train pipeline (called by ``compat.apply``)."""
    import basicsr.train

    basicsr.train.build_model = _stopping(basicsr.train.build_model)
    basicsr.train.train_pipeline = _with_handlers(basicsr.train.train_pipeline)

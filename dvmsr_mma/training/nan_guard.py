"""The NaN/Inf guard of a training step: ``train.nan_policy: stop | skip`` and ``train.nan_skip_limit``.

BasicSR trains on after a loss turns NaN: the optimizer writes NaN into every weight, and each later checkpoint
is broken. Here the loss terms are checked before ``backward`` and the gradients before the optimizer step, so
a bad step never reaches the weights. ``stop`` (default) logs one line (iteration, loss term or parameter,
learning rate) and raises :class:`~dvmsr_mma.utils.errors.TrainingDiverged`: nothing of the step is saved, and the
newest checkpoint and state are those from before it. ``skip`` drops the step (no optimizer step, no EMA
update) and stops once ``nan_skip_limit`` steps in a row were bad. Under fp16 a non-finite gradient is the
GradScaler's business (it skips the step and lowers the scale), so only the losses are checked.

With several processes every rank must take the same decision, or the ones that call ``backward`` wait for
the others forever: the loss verdict is agreed with one all-reduce of a single number per step (the gradients
need none: DDP has already summed them, NaN included).
"""
import math
from typing import Any, Iterable, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from dvmsr_mma.utils.errors import TrainingDiverged

NAN_POLICIES = ('stop', 'skip')
DEFAULT_SKIP_LIMIT = 10
_total_norm = getattr(torch.nn.utils, 'get_total_norm', None)  # torch >= 2.6: a few foreach kernels


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (the flag itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _finite(tensors: Iterable[torch.Tensor]) -> bool:
    tensors = list(tensors)
    if not tensors:
        return True
    if _total_norm is not None:
        return bool(torch.isfinite(_total_norm(tensors)))
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class NanGuard:
    """The verdicts of one run's training steps (``train`` options); counts bad steps in a row."""

    def __init__(self, train_opt: Mapping[str, Any]):
        self.policy = train_opt.get('nan_policy') or 'stop'
        self.limit = int(train_opt.get('nan_skip_limit') or DEFAULT_SKIP_LIMIT)
        self.bad_in_a_row = 0

    def losses_ok(self, loss_dict: Mapping[str, torch.Tensor], current_iter: int, lr: float,
                  device: torch.device) -> bool:
        """Whether every loss term is finite on every rank; a bad step is logged, then stops or is skipped."""
        values = [(name, float(value.detach() if torch.is_tensor(value) else value))
                  for name, value in loss_dict.items()]
        bad = [f'{name} = {value}' for name, value in values if not math.isfinite(value)]
        if not _any_rank(bool(bad), device):
            return True
        self._bad_step(f'non-finite loss {", ".join(bad)}' if bad else 'non-finite loss on another rank',
                       current_iter, lr)
        return False

    def grads_ok(self, named_params: Iterable[Tuple[str, torch.nn.Parameter]], current_iter: int,
                 lr: float) -> bool:
        """Whether every gradient is finite (identical on all ranks once DDP has reduced them)."""
        named = [(name, p.grad) for name, p in named_params if p.grad is not None]
        if _finite(grad for _, grad in named):
            self.bad_in_a_row = 0
            return True
        first: Optional[str] = next((name for name, grad in named if not bool(torch.isfinite(grad).all())), None)
        self._bad_step(f'non-finite gradient of {first} (the loss terms are finite)', current_iter, lr)
        return False

    def step_done(self) -> None:
        """A step that went through (the fp16 path, where the scaler judges the gradients)."""
        self.bad_in_a_row = 0

    def _bad_step(self, what: str, current_iter: int, lr: float) -> None:
        from basicsr.utils import get_root_logger

        self.bad_in_a_row += 1
        line = f'iter {current_iter}: {what} (lr {lr:.3e}); '
        kept = 'nothing of this step was saved: the newest checkpoint and training state are from before it'
        if self.policy == 'stop':
            line += f'training stops (train.nan_policy: stop); {kept}'
        elif self.bad_in_a_row >= self.limit:
            line += (f'{self.bad_in_a_row} bad steps in a row reached train.nan_skip_limit: {self.limit}, training '
                     f'stops; {kept}')
        else:
            get_root_logger().error(line + f'step skipped (train.nan_policy: skip; {self.bad_in_a_row} in a row, '
                                           f'stops at {self.limit})')
            return
        get_root_logger().error(line)
        raise TrainingDiverged(line)

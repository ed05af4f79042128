"""``SRModel``'s training step with mixed precision and the NaN guard; shared by ``DistillationModel``.

Patched into BasicSR's ``SRModel`` from :func:`dvmsr_mma.training.compat.apply` (rather than a new registered model) so
that ``model_type: SRModel`` option files keep working and gain ``train.amp``, ``train.nan_policy`` and
``val.amp``. Without those options the step computes exactly what BasicSR's does: the same forward, loss sum,
``backward``, optimizer step and EMA update, in the same order.

- ``train.amp`` / ``val.amp`` = ``bf16 | fp16 | ~``: autocast (:func:`autocast`) around the forward and the losses;
  fp16 scales the loss with ``self.grad_scaler`` (:func:`grad_scaler`), whose state goes into the training state
  (:mod:`dvmsr_mma.training.resume`). Off (``~``, the default) is a null context and a disabled scaler, so a run
  without the option computes exactly what it did before; fp16 needs the scaler (its small gradients underflow
  otherwise), bf16 has fp32's range and needs none; CPU autocast takes both, so the tests run on CPU.
- ``train.nan_policy`` / ``nan_skip_limit``: :class:`dvmsr_mma.training.nan_guard.NanGuard` before ``backward`` (losses)
  and before the optimizer step (gradients).
- ``val.amp``: ``test()`` (validation, ``basicsr test``) under autocast; the output comes back as fp32.

A model's ``optimize_parameters`` / ``test`` carrying ``AMP_AWARE`` honours these options; the option checks
refuse them for models that train or test their own way (SRGANModel, ...), which would silently ignore them.
"""
import contextlib
import functools
from collections import OrderedDict
from typing import Callable, ContextManager, Dict, Iterator, Optional, Tuple

import torch

from dvmsr_mma.training.nan_guard import NanGuard

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
AMP_CHOICES = (*AMP_DTYPES, None)  # what train.amp and val.amp accept (false means off as well)


def autocast(device: torch.device, amp: Optional[str]) -> ContextManager:
    """Autocast to ``amp``'s dtype on ``device``; nothing at all when ``amp`` is off."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: Optional[str]) -> torch.amp.GradScaler:
    """The loss scaler of a run: enabled for fp16 only (a disabled one is inert, and has no state to save)."""
    return torch.amp.GradScaler(device.type, enabled=amp == 'fp16')

AMP_AWARE = 'honours_amp_options'  # attribute set on optimize_parameters / test functions that use this module


def amp_aware(func: Callable) -> Callable:
    """Mark ``func`` (an ``optimize_parameters`` or ``test``) as honouring the amp / nan_policy options."""
    setattr(func, AMP_AWARE, True)
    return func


def training_autocast(model):
    """Autocast for the forward and the losses of ``model``'s training step (``train.amp``)."""
    return autocast(model.device, model.amp)


def sr_losses(model) -> Dict[str, torch.Tensor]:
    """SRModel's loss terms on ``model.output`` (pixel, perceptual, style), in BasicSR's order."""
    loss_dict = OrderedDict()
    if model.cri_pix:
        loss_dict['l_pix'] = model.cri_pix(model.output, model.gt)
    if model.cri_perceptual:
        l_percep, l_style = model.cri_perceptual(model.output, model.gt)
        if l_percep is not None:
            loss_dict['l_percep'] = l_percep
        if l_style is not None:
            loss_dict['l_style'] = l_style
    return loss_dict


def _trained_parameters(model) -> Iterator[Tuple[str, torch.nn.Parameter]]:
    """Named parameters of the networks ``optimizer_g`` trains (the student, DistillationModel's adapters)."""
    for net_name in ('net_g', 'adapters'):
        net = getattr(model, net_name, None)
        if net is not None:
            for name, param in model.get_bare_model(net).named_parameters():
                yield f'{net_name}.{name}', param


def finish_step(model, loss_dict: Dict[str, torch.Tensor], l_total: torch.Tensor, current_iter: int) -> None:
    """Backward, guarded optimizer step, loss log and EMA update of ``model.optimizer_g`` for ``l_total``."""
    guard, scaler, optimizer = model.nan_guard, model.grad_scaler, model.optimizer_g
    lr = model.get_current_learning_rate()[0]
    ok = guard.losses_ok(loss_dict, current_iter, lr, model.device)
    if ok and scaler.is_enabled():
        scaler.scale(l_total).backward()
        scaler.step(optimizer)  # skips the step itself when a gradient overflowed
        scaler.update()
        guard.step_done()
    elif ok:
        l_total.backward()
        ok = guard.grads_ok(_trained_parameters(model), current_iter, lr)
        if ok:
            optimizer.step()
    if not ok:
        optimizer.zero_grad()
    model.log_dict = model.reduce_loss_dict(loss_dict)
    if ok and model.ema_decay > 0:
        model.model_ema(decay=model.ema_decay)


@amp_aware
def optimize_parameters(self, current_iter: int) -> None:
    """Replacement for ``SRModel.optimize_parameters``: BasicSR's step, with ``train.amp`` and the guard."""
    self.optimizer_g.zero_grad()
    with training_autocast(self):
        self.output = self.net_g(self.lq)
        loss_dict = sr_losses(self)
        l_total = sum(loss_dict.values())
    finish_step(self, loss_dict, l_total, current_iter)


def _with_step_settings(init_training_settings: Callable) -> Callable:

    @functools.wraps(init_training_settings)
    def wrapper(self):
        init_training_settings(self)
        train_opt = self.opt['train']
        self.amp = train_opt.get('amp') or None
        self.grad_scaler = grad_scaler(self.device, self.amp)
        self.nan_guard = NanGuard(train_opt)

    return wrapper


def _with_val_amp(test: Callable) -> Callable:

    @functools.wraps(test)
    def wrapper(self):
        amp = (self.opt.get('val') or {}).get('amp')
        if not amp:
            return test(self)
        with autocast(self.device, amp):
            test(self)
        self.output = self.output.float()

    return amp_aware(wrapper)


def install() -> None:
    """Patch BasicSR's ``SRModel`` (called by ``compat.apply``)."""
    from basicsr.models.sr_model import SRModel

    SRModel.init_training_settings = _with_step_settings(SRModel.init_training_settings)
    SRModel.optimize_parameters = optimize_parameters
    SRModel.test = _with_val_amp(SRModel.test)

"""Mixed precision for training and validation: ``train.amp`` / ``val.amp`` = ``bf16 | fp16 | ~``.

A leaf module (torch only). Off (``~``, the default) is a null context and a disabled scaler, so a run without
the option computes exactly what it did before. fp16 needs ``torch.amp.GradScaler`` (its small gradients
underflow otherwise); bf16 has fp32's range and needs none. CPU autocast takes both, so the tests run on CPU.
"""
import contextlib
from typing import ContextManager, Optional

import torch

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

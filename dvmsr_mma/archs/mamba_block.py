"""The Mamba mixer shared by DVMSR and MMA.

One class, :class:`Mamba`, with the parameter names and initialisation of ``mamba_ssm`` 1.1.1's
``mamba_ssm.modules.mamba_simple.Mamba`` (unidirectional, ``bimamba_type='none'``, used by DVMSR) and of the
Vim fork of that file (``hustvl/Vim``, ``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py``) with
``bimamba_type='v2'`` (bidirectional, used by MMA). Same names means released checkpoints load unchanged.

The forward follows the fused ``use_fast_path`` route of those files (``mamba_inner_fn`` /
``mamba_inner_fn_no_out_proj``), which is the one the released weights were trained with; the scan and
the causal conv come from :mod:`dvmsr_mma.ops`, which picks the CUDA kernels, Triton, numba or PyTorch.
Two layouts, one math: where the scan runs numba (CPU), the mixer keeps its tensors token-major (b, l, d) as
the matmuls make them and the kernels read them in place; elsewhere it builds upstream's (b, d, l).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from dvmsr_mma.ops import causal_conv1d, causal_conv1d_tokens, selective_scan, selective_scan_tokens, token_major

__all__ = ['Mamba', 'DropPath']


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``), kept here so the archs do not need timm."""

    def __init__(self, drop_prob=0.):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if self.drop_prob == 0. or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask / keep_prob

    def extra_repr(self):
        return f'drop_prob={self.drop_prob:.3f}'


class Mamba(nn.Module):
    """Selective-SSM mixer on token sequences: (b, l, d_model) -> (b, l, d_model).

    Args mirror ``mamba_ssm`` 1.1.1 ``Mamba`` so ``ssm_cfg`` dicts written for it work here.
    ``bimamba_type``: ``'none'`` (one direction) or ``'v2'`` (Vim: a second scan over the reversed sequence
    with its own ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``; ``in_proj`` and ``out_proj``
    shared; ``out_proj(y_f + flip(y_b))``, halved only when ``if_divide_out``, which Vim and MMA leave False).
    ``use_fast_path`` and ``layer_idx`` are accepted for config compatibility; the op dispatch is in
    :mod:`dvmsr_mma.ops`.

    Initialisation is upstream's: ``dt_proj.weight`` uniform in +-dt_rank^-0.5 * dt_scale, ``dt_proj.bias`` the
    inverse softplus of a log-uniform dt in [dt_min, dt_max] (marked ``_no_reinit``), ``A_log = log(1..d_state)``,
    ``D = 1``. Vim's v2 gives the backward branch only ``A_b_log`` and ``D_b`` the same way; ``dt_proj_b``,
    ``x_proj_b`` and ``conv1d_b`` keep PyTorch's default init there, and so do they here.
    """

    def __init__(self,
                 d_model,
                 d_state=16,
                 d_conv=4,
                 expand=2,
                 dt_rank='auto',
                 dt_min=0.001,
                 dt_max=0.1,
                 dt_init='random',
                 dt_scale=1.0,
                 dt_init_floor=1e-4,
                 conv_bias=True,
                 bias=False,
                 use_fast_path=True,
                 layer_idx=None,
                 device=None,
                 dtype=None,
                 bimamba_type='none',
                 if_divide_out=False):
        factory_kwargs = {'device': device, 'dtype': dtype}
        super().__init__()
        if bimamba_type not in ('none', 'v2'):
            raise NotImplementedError(f"bimamba_type must be 'none' or 'v2', got {bimamba_type!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == 'auto' else dt_rank
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.bimamba_type = bimamba_type
        self.if_divide_out = if_divide_out

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = self._make_conv1d(conv_bias, factory_kwargs)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)
        self._init_dt_proj(self.dt_proj, dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self.A_log = nn.Parameter(self._s4d_real_log(device))  # kept in fp32
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # kept in fp32
        self.D._no_weight_decay = True

        if bimamba_type == 'v2':
            # Creation order as Vim (A_b_log, conv1d_b, x_proj_b, dt_proj_b, D_b): same RNG draws for a seed.
            self.A_b_log = nn.Parameter(self._s4d_real_log(device))
            self.A_b_log._no_weight_decay = True
            self.conv1d_b = self._make_conv1d(conv_bias, factory_kwargs)
            self.x_proj_b = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False, **factory_kwargs)
            self.dt_proj_b = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)
            self.D_b = nn.Parameter(torch.ones(self.d_inner, device=device))
            self.D_b._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def _make_conv1d(self, conv_bias, factory_kwargs):
        # Depthwise, weight (d_inner, 1, d_conv); the padding is unused (ops.causal_conv1d pads causally).
        return nn.Conv1d(self.d_inner, self.d_inner, kernel_size=self.d_conv, groups=self.d_inner,
                         padding=self.d_conv - 1, bias=conv_bias, **factory_kwargs)

    def _s4d_real_log(self, device):
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device)
        return torch.log(a.repeat(self.d_inner, 1)).contiguous()  # (d_inner, d_state)

    def _init_dt_proj(self, dt_proj, dt_init, dt_scale, dt_min, dt_max, dt_init_floor):
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == 'constant':
            nn.init.constant_(dt_proj.weight, dt_init_std)
        elif dt_init == 'random':
            nn.init.uniform_(dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError(f'dt_init {dt_init!r}')
        # softplus(dt_proj.bias) log-uniform in [dt_min, dt_max]
        dt = torch.exp(
            torch.rand(self.d_inner, device=dt_proj.bias.device) * (math.log(dt_max) - math.log(dt_min)) +
            math.log(dt_min)).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
        with torch.no_grad():
            dt_proj.bias.copy_(inv_dt)
        dt_proj.bias._no_reinit = True

    @staticmethod
    def _channels_first(weight, x):
        """``weight @ x^T`` for x (b, l, k): (b, out, l) with stride(-1) == 1, the layout upstream's
        ``rearrange(W @ rearrange(x, 'b l k -> k (b l)'), 'd (b l) -> b d l')`` gives the kernels: the conv then
        takes its (b, d, l) kernel, never the channel-last one, and the scan gets delta and z without a copy."""
        b, l, k = x.shape
        return (weight @ x.reshape(b * l, k).t()).view(weight.shape[0], b, l).permute(1, 0, 2)

    def _ssm(self, xz, conv1d, x_proj, dt_proj, A_log, D, reverse):
        """One direction of ``mamba_inner_fn_no_out_proj``: xz (b, 2*d_inner, l) -> y (b, d_inner, l); ``reverse``:
        on the exact reverse of the sequence (x and the gate z), flipped back."""
        if reverse:
            return self._ssm(xz.flip(-1), conv1d, x_proj, dt_proj, A_log, D, False).flip(-1)
        x, z = xz.chunk(2, dim=1)  # (b, d_inner, l) each
        x = causal_conv1d(x, conv1d.weight.squeeze(1), conv1d.bias, activation='silu')  # weight (d, 1, w) -> (d, w)
        x_dbl = x_proj(x.transpose(1, 2))  # (b, l, dt_rank + 2 * d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self._channels_first(dt_proj.weight, dt)  # (b, d_inner, l); the bias is added in the scan
        B = B.transpose(1, 2).contiguous()  # (b, d_state, l)
        C = C.transpose(1, 2).contiguous()
        A = -torch.exp(A_log.float())  # (d_inner, d_state)
        return selective_scan(x, delta, A, B, C, D.float(), z=z, delta_bias=dt_proj.bias.float(), delta_softplus=True)

    def _in_proj_halves(self, hidden_states):
        """x and z, (b, l, d_inner) each, for the token-major path. With autograd on, two matmuls (the halves of
        ``in_proj``): the backward then adds two input gradients, where one matmul's halves would have their
        gradients concatenated into a (b, l, 2*d_inner) tensor (3.5% of a DVMSR x4 training step). Without, one
        matmul and two views (6% faster than two at 65536 tokens)."""
        weight, bias = self.in_proj.weight, self.in_proj.bias
        if not torch.is_grad_enabled():
            return F.linear(hidden_states, weight, bias).chunk(2, dim=-1)
        biases = (None, None) if bias is None else bias.chunk(2)
        return tuple(F.linear(hidden_states, w, b) for w, b in zip(weight.chunk(2), biases))

    def _ssm_tokens(self, xz, conv1d, x_proj, dt_proj, A_log, D, reverse):
        """:meth:`_ssm` token-major: xz the pair (x, z) of :meth:`_in_proj_halves` -> y (b, l, d_inner), every tensor
        read where the matmuls put it; ``reverse`` runs the kernels backwards in time instead of flipping."""
        x, z = xz
        x = causal_conv1d_tokens(x, conv1d.weight.squeeze(1), conv1d.bias, activation='silu', reverse=reverse)
        dt, B, C = torch.split(x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # (b, l, d_inner); the bias is added in the scan. With the weight as a contiguous (dt_rank, d_inner) operand
        # its gradient comes as dt^T g, 3x faster than F.linear's g^T dt for dt_rank 4 (the training step's slowest mm)
        delta = dt @ dt_proj.weight.t().contiguous()
        A = -torch.exp(A_log.float())
        return selective_scan_tokens(x, delta, A, B, C, D.float(), z=z, delta_bias=dt_proj.bias.float(),
                                     delta_softplus=True, reverse=reverse)

    def forward(self, hidden_states):
        """hidden_states: (b, l, d_model) -> (b, l, d_model)."""
        tokens = token_major(hidden_states)
        if tokens:
            xz, ssm = self._in_proj_halves(hidden_states), self._ssm_tokens
        else:
            xz, ssm = self._channels_first(self.in_proj.weight, hidden_states), self._ssm  # (b, 2*d_inner, l)
            if self.in_proj.bias is not None:
                xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        y = ssm(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, False)
        if self.bimamba_type == 'v2':  # the backward branch: the reversed sequence, summed in sequence order
            y = y + ssm(xz, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, True)
            if self.if_divide_out:
                y = y / 2
        y = y if tokens else y.transpose(1, 2)  # (b, l, d_inner)
        return self.out_proj(y.to(self.out_proj.weight.dtype))

    def extra_repr(self):
        return (f'd_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, '
                f'dt_rank={self.dt_rank}, bimamba_type={self.bimamba_type!r}')

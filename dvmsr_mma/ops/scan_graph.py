"""The selective scan as a graph that does not depend on the sequence length: what a dynamic-size ONNX export
traces (``dvmsr_mma.ops.dispatch.ops_path('graph')``; forward only).

The other paths advance a Python-sized number of chunks, so a trace unrolls them for one length. Here the
length enters only as a tensor dimension:

1. pad l to ``K * CHUNK`` (the padded steps get delta 0: decay 1, input 0, and are cropped at the end);
2. a scan over the ``CHUNK`` steps of a chunk, vectorized over all K chunks, from a zero state: each chunk's
   final state; its decay, the product of its steps' decays, is exp(A * sum of its deltas);
3. a scan over the K chunks: the state entering each chunk (``h = P_k h + S_k``);
4. the scan of 2 again, now from the entering states, which emits the outputs.

Both scans are ``torch._higher_order_ops.scan``, which ``torch.onnx`` exports as one ONNX ``Scan`` each, so the
graph holds one step of each, whatever l is. The state is fp32 and decays are multiplied, never divided by.
Memory is O(b d l + b d n l / CHUNK); the work is about twice one pass (step 2 and 4 both compute the decays).
"""
import torch
import torch.nn.functional as F

from .scan_inputs import checked_b_c, fp32_inputs

CHUNK = 64  # steps per chunk: K = l / 64 iterations of the cross-chunk scan, 64 of the in-chunk one


def _in_chunk_step(A_: torch.Tensor, emit: bool):
    """The in-chunk step for ``A_`` (1, g, dg, 1, n) on the states of all chunks (b, g, dg, K, n); ``emit``:
    also the outputs <h_t, C_t> (b, g, dg, K), else only the final states."""

    def step(h, xs):
        dt_t, du_t, B_t = xs[:3]  # (b, g, dg, K), (b, g, dg, K), (b, g, 1, K, n)
        h = torch.exp(dt_t.unsqueeze(-1) * A_) * h + du_t.unsqueeze(-1) * B_t
        return h, (h * xs[3]).sum(-1) if emit else ()

    return step


def _chunk_carry(carry, xs):
    """State entering chunk k -> entering chunk k + 1; emits the entering state."""
    p, s = xs  # (b, g, dg, n) each
    return p * carry + s, carry.clone()


def selective_scan_graph(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """:func:`~dvmsr_mma.ops.scan_torch.selective_scan_torch`'s semantics (same arguments and shapes; returns
    (b, d, l) in u's dtype) in a graph whose size does not depend on l (see the module docstring)."""
    from torch._higher_order_ops.scan import scan  # recent torch only: imported when a dynamic graph is traced
    dtype_in = u.dtype
    B, C = checked_b_c(u, delta, A, B, C, D, z, delta_bias)
    u, _, dt, A, B, C = fp32_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, l = u.shape
    g, n = B.shape[1], A.shape[1]
    dg = d // g
    k = (l + CHUNK - 1) // CHUNK
    pad = k * CHUNK - l

    def chunked(x: torch.Tensor) -> torch.Tensor:  # (..., l) -> (CHUNK, ..., K): time within the chunk first
        x = F.pad(x, (0, pad)).unflatten(-1, (k, CHUNK))
        return x.movedim(-1, 0).contiguous()

    dt_c = chunked(dt.view(b, g, dg, l))  # (CHUNK, b, g, dg, K)
    du_c = chunked((dt * u).view(b, g, dg, l))
    B_c = chunked(B.unsqueeze(2)).transpose(-1, -2).contiguous()  # (b, g, n, l) -> (CHUNK, b, g, 1, K, n)
    C_c = chunked(C.unsqueeze(2)).transpose(-1, -2).contiguous()
    A_ = A.view(1, g, dg, 1, n)
    s, _ = scan(_in_chunk_step(A_, False), u.new_zeros(b, g, dg, k, n), (dt_c, du_c, B_c))  # (b, g, dg, K, n)
    p = torch.exp(dt_c.sum(0).unsqueeze(-1) * A_)  # each chunk's decay: the product of its steps' decays
    # (b, g, dg, K, n) -> (K, b, g, dg, n): one scan step per chunk
    _, h0 = scan(_chunk_carry, u.new_zeros(b, g, dg, n), (p.movedim(3, 0), s.movedim(3, 0)))
    h0 = h0.movedim(0, 3).clone(memory_format=torch.contiguous_format)  # the state entering each chunk
    _, y = scan(_in_chunk_step(A_, True), h0, (dt_c, du_c, B_c, C_c))  # y: (CHUNK, b, g, dg, K)
    out = y.movedim(0, -1).reshape(b, d, k * CHUNK)[..., :l]
    if D is not None:
        out = out + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype_in)

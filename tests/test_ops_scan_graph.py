"""The length-independent scan (``dvmsr_mma.ops.scan_graph``) that dynamic ONNX export traces: equal to the exact
PyTorch scan at lengths around and across chunk boundaries, every input layout, and one traced graph right at
other lengths."""
import pytest
import torch

from dvmsr_mma.ops.scan_graph import CHUNK, selective_scan_graph
from dvmsr_mma.ops.scan_torch import selective_scan_torch


def inputs(length, b=2, d=6, n=4, layout='time-varying', seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    bc_shape = {'time-varying': (b, n, length), 'grouped': (b, 2, n, length), 'time-invariant': (d, n)}[layout]
    return dict(u=torch.randn(b, d, length, generator=g).to(dtype),
                delta=torch.randn(b, d, length, generator=g).to(dtype),
                A=-torch.rand(d, n, generator=g) * 4, B=torch.randn(*bc_shape, generator=g).to(dtype),
                C=torch.randn(*bc_shape, generator=g).to(dtype), D=torch.randn(d, generator=g),
                z=torch.randn(b, d, length, generator=g).to(dtype), delta_bias=torch.randn(d, generator=g))


@pytest.mark.parametrize('length', [1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17])
def test_matches_the_pytorch_scan_across_chunk_boundaries(length):
    x = inputs(length)
    want = selective_scan_torch(**x, delta_softplus=True)
    got = selective_scan_graph(**x, delta_softplus=True)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize('layout', ['grouped', 'time-invariant'])
def test_other_b_c_layouts_and_absent_options(layout):
    x = inputs(3 * CHUNK - 5, layout=layout, seed=1)
    for drop in ((), ('D', 'z', 'delta_bias')):
        kw = {k: v for k, v in x.items() if k not in drop}
        want = selective_scan_torch(**kw, delta_softplus=not drop)
        assert (selective_scan_graph(**kw, delta_softplus=not drop) - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_keep_an_fp32_state(dtype):
    x = inputs(2 * CHUNK + 3, dtype=dtype, seed=2)
    got = selective_scan_graph(**x, delta_softplus=True)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), selective_scan_torch(**x, delta_softplus=True).float(), rtol=0, atol=0)


def test_one_onnx_graph_is_right_at_every_length(tmp_path):
    """Exported with a symbolic length, as ``basicsr export --dynamic`` exports the networks: the graph holds one
    step of each scan (three ONNX ``Scan`` nodes, no unrolling) and onnxruntime runs any length with it, one chunk
    (length 1), whole chunks (128) and a partial last chunk (400)."""
    ort = pytest.importorskip('onnxruntime')  # the [onnx] extra, which make test installs
    onnx = pytest.importorskip('onnx')

    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, z, delta_bias):
            return selective_scan_graph(u, delta, A, B, C, D, z, delta_bias, True)

    length = torch.export.Dim('length')
    program = torch.onnx.export(Scan().eval(), tuple(inputs(70).values()), None, dynamo=True, optimize=False,
                                dynamic_shapes=({2: length}, {2: length}, None, {2: length}, {2: length}, None,
                                                {2: length}, None), verbose=False)
    program.save(str(tmp_path / 'scan.onnx'))
    model = onnx.load(str(tmp_path / 'scan.onnx'))
    assert [n.op_type for n in model.graph.node].count('Scan') == 3
    session = ort.InferenceSession(str(tmp_path / 'scan.onnx'), providers=['CPUExecutionProvider'])
    names = [i.name for i in session.get_inputs()]
    for n in (1, 2 * CHUNK, 400):
        x = inputs(n, seed=n)
        want = selective_scan_torch(**x, delta_softplus=True)
        feed = dict(zip(names, (v.numpy() for v in x.values())))  # the forward's arguments, in order
        got = torch.from_numpy(session.run(None, feed)[0])
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()

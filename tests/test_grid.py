"""Tri-plane grid encoder: the fast paths against the reference (values and gradients), layouts, tinycudann parity."""
import math

import pytest
import torch
from torch.testing import assert_close

from instag.grid import (PLANES, TriPlaneConfig, TriPlaneEncoder, _inside, _tcnn_layout, _tcnn_rows, _triplane_gather,
                         _triplane_reference, grid_levels, mouth_grid_config)

FACE = TriPlaneConfig(backend='torch')
MOUTH = mouth_grid_config(backend='torch')
HASHED = TriPlaneConfig(base_resolution=16., desired_resolution=96., log2_hashmap_size=10, backend='torch')


def _points(n, seed=0, spread=0.16, dtype=torch.float64):
    "Random points, a few of them outside the [-0.15, 0.15] box on some axis."
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(n, 3, generator=g) * 2 - 1) * spread).to(dtype)


def _encoder(cfg, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    enc = TriPlaneEncoder(cfg).to(dtype)
    with torch.no_grad(): enc.tables.uniform_(-1, 1)  # large values: differences between vertices are visible
    return enc


def _values_and_grads(fn, means, tables, seed=1):
    means = means.detach().clone().requires_grad_(True)
    out = fn(means)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    g_means, g_tables = torch.autograd.grad((out * w).sum(), [means, tables])
    return out, g_means, g_tables


def test_official_layouts_never_hash():
    face, mouth = grid_levels(FACE), grid_levels(MOUTH)
    assert (face.sides[0], face.sides[-1]) == (17, 40) and not any(face.hashed)
    assert (mouth.sides[0], mouth.sides[-1]) == (65, 59) and not any(mouth.hashed)
    assert face.scales[0] == 15.0 and math.isclose(face.scales[-1], 37.4, rel_tol=1e-9)
    assert all(o % 8 == 0 for o in face.offsets)
    assert TriPlaneEncoder(FACE).out_dim == 36 and TriPlaneEncoder(FACE).tables.abs().max() <= 1e-4


@pytest.mark.parametrize('cfg', [FACE, MOUTH], ids=['face', 'mouth'])
def test_dense_matches_reference(cfg):
    enc = _encoder(cfg)
    means = _points(3000)
    assert enc.dense
    fast = _values_and_grads(enc, means, enc.tables)
    ref = _values_and_grads(lambda x: _triplane_reference(x, enc.tables, cfg), means, enc.tables)
    for a, b in zip(fast, ref): assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('cfg', [FACE, HASHED], ids=['dense-layout', 'hashed-layout'])
def test_gather_matches_reference(cfg):
    enc = _encoder(cfg)
    means = _points(2000, seed=3)
    lv = grid_levels(cfg)
    assert any(lv.hashed) == (cfg is HASHED)
    fast = _values_and_grads(lambda x: _triplane_gather(x, enc.tables, cfg, lv), means, enc.tables)
    ref = _values_and_grads(lambda x: _triplane_reference(x, enc.tables, cfg), means, enc.tables)
    for a, b in zip(fast, ref): assert_close(a, b, rtol=1e-9, atol=1e-9)
    if cfg is HASHED: assert not enc.dense and torch.equal(enc(means), fast[0])


def test_gradcheck_dense_points():
    "Finite differences on the points (the tables enter linearly and are covered by the reference comparison)."
    enc = _encoder(FACE)
    means = _points(6, seed=5, spread=0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: enc(x), (means,), eps=1e-7, atol=1e-5)


def test_float32_close_to_float64():
    enc64 = _encoder(FACE)
    enc32 = TriPlaneEncoder(FACE)
    with torch.no_grad(): enc32.tables.copy_(enc64.tables.float())
    means = _points(5000, seed=7)
    assert_close(enc32(means.float()).double(), enc64(means), rtol=0, atol=1e-5)


def test_outside_the_box_gives_zero_and_no_gradient():
    enc = _encoder(FACE)
    means = torch.tensor([[0.2, 0.0, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.151], [0.05, 0.05, 0.05]],
                         dtype=torch.float64, requires_grad=True)
    out = enc(means).view(4, 3, 12)
    inside = _inside(means, 0.15)
    assert (out[~inside] == 0).all() and (out[inside] != 0).all()
    out.sum().backward()
    assert (means.grad[:3].abs().sum(1) > 0).tolist() == [True, True, True]  # the plane without that axis still moves
    assert (means.grad[0, 0] == 0) and (means.grad[1, 1] == 0) and (means.grad[2, 2] == 0)


def test_encoder_feature_order_is_xy_yz_xz():
    enc = _encoder(FACE)
    means = _points(50, spread=0.1)
    with torch.no_grad():
        tables = enc.tables.clone(); tables[1:] = 0; enc.tables.copy_(tables)  # only the xy table is non-zero
    out = enc(means)
    assert out[:, :12].abs().sum() > 0 and out[:, 12:].abs().sum() == 0
    moved = means.clone(); moved[:, 2] = -moved[:, 2]  # z does not change xy features
    assert_close(enc(moved)[:, :12], out[:, :12])


def _tcnn_like(means, params, cfg):
    "tinycudann's grid semantics in plain torch (sides ceil(s)+1, index x + y * side mod rows), on its parameter layout."
    lv, (sides, sizes, offsets) = grid_levels(cfg), _tcnn_layout(cfg)
    u = ((means + cfg.bound) / (2 * cfg.bound)).clamp(0, 1)
    out = []
    for p, (a, b) in enumerate(PLANES):
        for l in range(cfg.n_levels):
            pos = u[:, [a, b]] * lv.scales[l] + 0.5
            cell = pos.floor(); frac = pos - cell; cell = cell.long()
            feat = 0
            for dx in (0, 1):
                for dy in (0, 1):
                    x, y = cell[:, 0] + dx, cell[:, 1] + dy
                    index = x ^ (y * 2654435761) & 0xFFFFFFFF if sides[l] ** 2 > sizes[l] else x + y * sides[l]
                    w = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                    feat = feat + w * params[p, offsets[l] + index % sizes[l]]
            out.append(feat)
    return torch.stack(out, 1) * _inside(means, cfg.bound).repeat_interleave(cfg.n_levels, 1)


@pytest.mark.parametrize('cfg', [FACE, MOUTH], ids=['face', 'mouth'])
def test_tcnn_rows_convert_tinycudann_layout_exactly(cfg):
    "`tables = tcnn_params[_tcnn_rows]` reproduces tinycudann's lookup for every point inside the box (CPU check)."
    _, _, toffsets = _tcnn_layout(cfg)
    params = torch.randn(3, toffsets[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tables = params[:, _tcnn_rows(cfg)][..., None]
    means = _points(3000, seed=11, spread=0.15)
    assert_close(_triplane_reference(means, tables, cfg), _tcnn_like(means, params, cfg), rtol=1e-9, atol=1e-9)


@pytest.mark.cuda
def test_tcnn_parity():
    tcnn = pytest.importorskip('tinycudann')  # noqa: F841
    for cfg in (TriPlaneConfig(backend='tcnn'), mouth_grid_config(backend='tcnn')):
        torch.manual_seed(0)
        enc = TriPlaneEncoder(cfg).cuda()
        assert enc.backend == 'tcnn'
        with torch.no_grad():
            for plane in enc.planes: plane.params.uniform_(-1, 1)
        means = (torch.rand(20_000, 3, device='cuda') * 0.3 - 0.15)
        ref_cfg = TriPlaneConfig(**{**cfg.to_dict(), 'backend': 'torch'})
        tables = enc.torch_tables()  # differentiable function of the tinycudann parameters
        out_tcnn = enc(means)
        out_ref = _triplane_reference(means, tables, ref_cfg)
        assert_close(out_tcnn, out_ref, rtol=1e-4, atol=1e-5)
        w = torch.randn_like(out_tcnn)
        g_tcnn = torch.autograd.grad((out_tcnn * w).sum(), [p.params for p in enc.planes])
        g_ref = torch.autograd.grad((_triplane_reference(means, enc.torch_tables(), ref_cfg) * w).sum(),
                                    [p.params for p in enc.planes])
        for a, b in zip(g_tcnn, g_ref): assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-4)

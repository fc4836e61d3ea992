"""Structure field: random init, per-name optimizers, densification keeping Adam state rows with their Gaussians."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from instag.gaussians import (DensifyStrategy, GaussianLR, duplicate, init_random, knn_mean_sq_dist, make_optimizers,
                              means_lr, remove, reset_opacity, sh_rest, split, update_means_lr)


def _gen(seed=0): return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize('sh_degree,k', [(1, 3), (2, 8)])
def test_init_random(sh_degree, k):
    g = init_random(500, extent=0.1, sh_degree=sh_degree, features_dim=4, generator=_gen())
    assert g['shN'].shape == (500, k, 3) and sh_rest(sh_degree) == k and g['features'].shape == (500, 4)
    assert g['means'].abs().max() <= 0.1 and g['means'].min() < -0.09 and g['means'].max() > 0.09
    assert_close(g['quats'], torch.tensor([1., 0, 0, 0]).expand(500, 4))
    assert_close(torch.sigmoid(g['opacities']), torch.full((500,), 0.1))
    assert (g['sh0'] >= 0).all() and (g['sh0'] <= 1 / 255).all()
    d = torch.cdist(g['means'], g['means']).square() + torch.eye(500) * 1e9  # brute-force 3-NN
    expected = d.topk(3, largest=False).values.mean(1).sqrt().log()
    assert_close(g['scales'], expected[:, None].expand(500, 3), rtol=1e-4, atol=1e-5)
    assert all(p.requires_grad for p in g.values())


def test_knn_chunks_agree():
    pts = torch.rand(300, 3, generator=_gen(1))
    assert_close(knn_mean_sq_dist(pts, chunk=7), knn_mean_sq_dist(pts, chunk=1000))


def test_optimizers_and_means_lr():
    g = init_random(50, generator=_gen())
    lr = GaussianLR(scene_extent=2.0)
    opts = make_optimizers(g, lr)
    assert set(opts) == set(g.keys())
    for name, opt in opts.items():
        assert opt.param_groups[0]['params'][0] is g[name] and opt.param_groups[0]['eps'] == 1e-15
    assert opts['means'].param_groups[0]['lr'] == pytest.approx(1.6e-4 * 2)
    assert opts['scales'].param_groups[0]['lr'] == pytest.approx(3e-3)
    assert means_lr(45_000, lr) == pytest.approx(1.6e-6 * 2) and means_lr(90_000, lr) == pytest.approx(1.6e-6 * 2)
    assert update_means_lr(opts, 15_000, lr) == pytest.approx(2 * math.exp(math.log(1.6e-4) * 2 / 3 + math.log(1.6e-6) / 3))


def _tagged(n=8, seed=0):
    "Gaussians whose Adam moments and strategy state carry the Gaussian's index (1-based) in every row."
    params = init_random(n, generator=_gen(seed))
    opts = make_optimizers(params)
    for name, p in params.items():
        p.grad = torch.zeros_like(p); opts[name].step(); p.grad = None
        tag = torch.arange(1., n + 1).view(-1, *[1] * (p.ndim - 1)).expand_as(p)
        opts[name].state[p]['exp_avg'] = tag.clone(); opts[name].state[p]['exp_avg_sq'] = 2 * tag.clone()
    state = {'grad2d': torch.arange(1., n + 1), 'count': torch.arange(1., n + 1), 'radii': torch.arange(1., n + 1)}
    return params, opts, state


def _rows(params, opts, name='means'):
    p = params[name]
    s = opts[name].state[p]
    assert opts[name].param_groups[0]['params'][0] is p
    return s['exp_avg'].reshape(len(p), -1)[:, 0], s['exp_avg_sq'].reshape(len(p), -1)[:, 0]


def _all_consistent(params, opts, state, expected):
    expected = torch.tensor(expected, dtype=torch.float32)
    for name in params.keys():
        m, v = _rows(params, opts, name)
        assert_close(m, expected, msg=name); assert_close(v, 2 * expected, msg=name)
        assert len(params[name]) == len(expected)
    for k in state: assert len(state[k]) == len(expected)


def test_remove_keeps_rows():
    params, opts, state = _tagged()
    before = params['means'].detach().clone()
    remove(params, opts, state, torch.tensor([1, 0, 0, 1, 0, 0, 0, 1], dtype=torch.bool))
    _all_consistent(params, opts, state, [2, 3, 5, 6, 7])
    assert_close(params['means'], before[[1, 2, 4, 5, 6]])
    assert_close(state['grad2d'], torch.tensor([2., 3, 5, 6, 7]))


def test_duplicate_appends_zero_moments():
    params, opts, state = _tagged()
    before = {k: v.detach().clone() for k, v in params.items()}
    duplicate(params, opts, state, torch.tensor([0, 1, 0, 0, 0, 0, 1, 0], dtype=torch.bool))
    _all_consistent(params, opts, state, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0])
    for k in params.keys(): assert_close(params[k][8:], before[k][[1, 6]])
    assert_close(state['count'][8:], torch.tensor([2., 7]))


def test_split_children_and_moments():
    params, opts, state = _tagged()
    with torch.no_grad(): params['scales'][2] = torch.tensor([-2., -3., -4.])
    before = {k: v.detach().clone() for k, v in params.items()}
    split(params, opts, state, torch.tensor([0, 0, 1, 0, 0, 1, 0, 0], dtype=torch.bool), generator=_gen(3))
    _all_consistent(params, opts, state, [1, 2, 4, 5, 7, 8, 0, 0, 0, 0])
    # children: [parent 2, parent 5] for child 0, then the same for child 1
    assert_close(params['scales'][6:], (before['scales'][[2, 5, 2, 5]].exp() / 1.6).log())
    assert_close(params['opacities'][6:], before['opacities'][[2, 5, 2, 5]])
    offsets = (params['means'][6:] - before['means'][[2, 5, 2, 5]]).abs()
    assert (offsets < 6 * before['scales'][[2, 5, 2, 5]].exp().max(1, keepdim=True).values).all()
    assert_close(state['radii'][6:], torch.tensor([3., 6, 3, 6]))


def test_reset_opacity_zeroes_only_opacity_moments():
    params, opts, state = _tagged()
    with torch.no_grad(): params['opacities'][:4] = -8.0
    before = params['opacities'].detach().clone()
    reset_opacity(params, opts, 0.01)
    assert_close(params['opacities'][:4], before[:4])  # already below 0.01: untouched
    assert_close(torch.sigmoid(params['opacities'][4:]), torch.full((4,), 0.01))
    assert _rows(params, opts, 'opacities')[0].abs().sum() == 0
    assert_close(_rows(params, opts, 'means')[0], torch.arange(1., 9))


def test_optimizer_steps_after_every_operation():
    params, opts, state = _tagged(20)
    ops = [lambda: duplicate(params, opts, state, torch.rand(len(params['means']), generator=_gen(1)) > 0.5),
           lambda: split(params, opts, state, torch.rand(len(params['means']), generator=_gen(2)) > 0.5),
           lambda: remove(params, opts, state, torch.rand(len(params['means']), generator=_gen(3)) > 0.7),
           lambda: reset_opacity(params, opts)]
    for op in ops:
        op()
        loss = sum(p.square().sum() for p in params.values())
        loss.backward()
        for o in opts.values(): o.step(); o.zero_grad()
        assert all(torch.isfinite(p).all() for p in params.values())


def _render_out(n, grads, radii):
    "A stand-in for the renderer's RenderOut: only means2d (with a gradient) and radii are read."
    means2d = torch.zeros(n, 2, requires_grad=True)
    return SimpleNamespace(means2d=means2d, radii=radii), lambda: (means2d * grads).sum().backward()


def test_strategy_statistics_in_ndc_units_and_visibility():
    s = DensifyStrategy(refine_start=10, refine_every=100)
    params = init_random(4, generator=_gen()); opts = make_optimizers(params)
    state = s.initialize_state(4)
    grads = torch.tensor([[1e-6, 0.], [0., 2e-6], [3e-6, 4e-6], [1., 1.]])
    out, backward = _render_out(4, grads, torch.tensor([2., 5., 1., 0.]))
    s.step_pre_backward(params, opts, state, 1, out); backward()
    report = s.step_post_backward(params, opts, state, 1, out, width=200, height=100)
    assert report == {'cloned': 0, 'split': 0, 'pruned': 0, 'reset': False}
    assert_close(state['grad2d'], torch.tensor([1e-4, 1e-4, ((3e-4) ** 2 + (2e-4) ** 2) ** 0.5, 0.]))
    assert_close(state['count'], torch.tensor([1., 1, 1, 0])); assert_close(state['radii'], torch.tensor([2., 5, 1, 0]))


def test_strategy_schedule():
    s = DensifyStrategy(grad_threshold=1e-3, refine_start=2, refine_every=2, refine_stop=12, reset_every=6,
                        percent_dense=0.01, scene_extent=1.0, prune_radius=20.0)
    params = init_random(40, generator=_gen()); opts = make_optimizers(params)
    with torch.no_grad():
        params['scales'][:20] = math.log(0.005)   # small: cloned
        params['scales'][20:] = math.log(0.05)    # large: split
    state = s.initialize_state(40)
    grads = torch.zeros(40, 2); grads[[0, 1, 20]] = 1e-4  # 1e-4 px * 256 = 2.6e-2 NDC units > 1e-3
    log = {}
    for step in range(1, 14):
        n = len(params['means'])
        g = torch.zeros(n, 2); g[:len(grads)] = grads if n >= 40 else grads[:n]
        out, backward = _render_out(n, g, torch.full((n,), 3.))
        s.step_pre_backward(params, opts, state, step, out); backward()
        log[step] = s.step_post_backward(params, opts, state, step, out, 512, 512, generator=_gen(step))
        for name, o in opts.items(): o.step(); o.zero_grad()
    assert log[1]['cloned'] == log[2]['cloned'] == 0  # densification starts after refine_start
    assert (log[4]['cloned'], log[4]['split']) == (2, 1)
    assert log[6]['reset'] and not log[4]['reset'] and not log[12]['reset']  # nothing from refine_stop on
    assert log[13] == {'cloned': 0, 'split': 0, 'pruned': 0, 'reset': False}
    # after the first reset every Gaussian is at opacity 0.01 >= prune_opacity 0.005: nothing pruned for opacity
    assert log[8]['pruned'] == 0


def test_strategy_prunes_transparent_and_too_big():
    s = DensifyStrategy(refine_start=0, refine_every=1, reset_every=1000, grad_threshold=1.0, scene_extent=1.0)
    params = init_random(10, generator=_gen()); opts = make_optimizers(params)
    with torch.no_grad():
        params['scales'][:] = math.log(0.01)
        params['opacities'][0] = -10.0          # transparent: pruned at once
        params['scales'][1] = math.log(0.5)     # big in the world (> 0.1 x extent): pruned after the first reset
    radii = torch.full((10,), 3.); radii[2] = 50.  # big on screen (> 20 px): also pruned after the first reset
    for step, expected in ((1, 1), (1001, 2)):
        n = len(params['means'])
        state = s.initialize_state(n)
        out, backward = _render_out(n, torch.zeros(n, 2), radii[10 - n:])
        s.step_pre_backward(params, opts, state, step, out); backward()
        assert s.step_post_backward(params, opts, state, step, out, 64, 64)['pruned'] == expected
    assert len(params['means']) == 7


def test_strategy_cap_grows_highest_gradients_first():
    s = DensifyStrategy(grad_threshold=1e-3, refine_start=0, refine_every=1, percent_dense=0.01, scene_extent=1.0,
                        max_gaussians=12)
    params = init_random(10, generator=_gen()); opts = make_optimizers(params)
    with torch.no_grad(): params['scales'][:] = math.log(0.005)   # all small: every grown Gaussian is cloned
    marker = params['means'].detach().clone()
    state = s.initialize_state(10)
    grads = torch.zeros(10, 2); grads[[1, 3, 5, 7], 0] = torch.tensor([1e-4, 4e-4, 3e-4, 2e-4])  # 4 above threshold
    out, backward = _render_out(10, grads, torch.full((10,), 3.))
    s.step_pre_backward(params, opts, state, 1, out); backward()
    report = s.step_post_backward(params, opts, state, 1, out, 512, 512)
    assert report['cloned'] == 2 and len(params['means']) == 12        # room for 2 only
    assert_close(params['means'][10:].detach().sort(0).values, marker[[3, 5]].sort(0).values)  # the two largest
    # at the cap nothing grows, however large the gradients
    state = s.initialize_state(12)
    out, backward = _render_out(12, torch.full((12, 2), 1e-2), torch.full((12,), 3.))
    s.step_pre_backward(params, opts, state, 2, out); backward()
    assert s.step_post_backward(params, opts, state, 2, out, 512, 512)['cloned'] == 0 and len(params['means']) == 12

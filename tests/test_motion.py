"""Motion field: shapes of the official networks, conditioning, hook slot, and explicit deformation composition."""
import pytest
import torch
from torch.testing import assert_close

from instag.grid import TriPlaneConfig, mouth_grid_config
from instag.motion import (AudioAttNet, AudioNet, Deformation, MotionField, apply_deformation,
                           face_motion_config, mouth_motion_config)


@pytest.fixture(scope='module')
def face():
    torch.manual_seed(0)
    return MotionField(face_motion_config(grid=TriPlaneConfig(backend='torch')))


@pytest.fixture(scope='module')
def mouth():
    torch.manual_seed(1)
    return MotionField(mouth_motion_config(grid=mouth_grid_config(backend='torch')))


def _inputs(n=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * 0.2 - 0.1, torch.randn(8, 16, 80, generator=g), torch.rand(6, generator=g)


def test_audio_nets():
    net, att = AudioNet(80, 32), AudioAttNet(32, 8)
    assert net(torch.randn(8, 16, 80)).shape == (8, 32)
    assert net(torch.randn(3, 2, 80)).shape == (3, 32)  # short windows (e.g. 2 hubert entries) reduce to one too
    with pytest.raises(AssertionError, match='at most 16'): net(torch.randn(1, 32, 80))
    code = torch.randn(1, 1, 32).expand(2, 8, 32)  # the same code in every frame: attention returns it
    assert_close(att(code), code[:, 0])
    assert [m.out_channels for m in att.conv if isinstance(m, torch.nn.Conv1d)] == [16, 8, 4, 2, 1]


def test_face_field_shapes_and_layers(face):
    means, audio, aus = _inputs()
    d = face(means, audio, aus)
    assert (d.d_means.shape, d.d_scales.shape, d.d_quats.shape) == ((500, 3), (500, 3), (500, 4))
    assert [l.in_features for l in face.deform_net.layers] == [74, 64, 64] and face.deform_net.layers[-1].out_features == 10
    assert all(l.bias is None for l in face.deform_net.layers)
    assert [(l.in_features, l.out_features) for l in face.region_att_net.layers] == [(36, 32), (32, 32)]
    assert [(l.in_features, l.out_features) for l in face.expression_net.layers] == [(5, 16), (16, 5)]
    assert [(l.in_features, l.out_features) for l in face.eye_att_net.layers] == [(36, 16), (16, 6)]


def test_face_d_means_scaled_by_1e2(face):
    means, audio, aus = _inputs()
    raw = torch.zeros(1)
    hook = face.deform_net.register_forward_hook(lambda m, i, o: raw.resize_(o.shape).copy_(o))
    d = face(means, audio, aus)
    hook.remove()
    assert_close(d.d_means, raw[:, :3] * 1e-2); assert_close(d.d_quats, raw[:, 3:7]); assert_close(d.d_scales, raw[:, 7:10])


def test_blink_is_clipped(face):
    means, audio, aus = _inputs()
    hi, higher = aus.clone(), aus.clone()
    hi[5], higher[5] = 2.0, 7.0
    assert_close(face(means, audio, hi).d_means, face(means, audio, higher).d_means)
    low = aus.clone(); low[5] = 0.5
    assert not torch.allclose(face(means, audio, low).d_means, face(means, audio, hi).d_means)


def test_face_needs_expression(face):
    means, audio, _ = _inputs()
    with pytest.raises(AssertionError, match='action units'): face(means, audio)


def test_mouth_field(mouth):
    means, audio, _ = _inputs()
    d = mouth(means, audio)
    assert d.d_scales is None and d.d_quats is None and d.d_means.shape == (500, 3)
    assert mouth.region_att_net is None and not hasattr(mouth, 'eye_att_net')
    assert mouth.deform_net.layers[0].in_features == 36 + 32 + 3 and mouth.deform_net.layers[-1].out_features == 3
    assert [l.out_features for l in mouth.deform_net.layers[:-1]] == [32, 32]
    assert_close(mouth(means, audio, hook=torch.zeros(3)).d_means, d.d_means)
    assert not torch.allclose(mouth(means, audio, hook=torch.tensor([1., -1., 2.])).d_means, d.d_means)
    # x and z are damped by 1/5 relative to y
    raw = torch.zeros(1)
    h = mouth.deform_net.register_forward_hook(lambda m, i, o: raw.resize_(o.shape).copy_(o))
    mouth(means, audio); h.remove()
    assert_close(d.d_means, raw * torch.tensor([0.2e-2, 1e-2, 0.2e-2]))


def test_gradients_reach_everything(face):
    means, audio, aus = _inputs(200)
    means.requires_grad_(True)
    face.zero_grad()
    d, att = face(means, audio, aus, return_attention=True)
    (sum(x.square().sum() for x in d.deltas()) + att.audio.sum() + att.eye.sum()).backward()
    assert means.grad.abs().sum() > 0
    # the lip probe is trained by the lip loss alone (below), never by the deformation
    missing = [n for n, p in face.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == ['lip_probe.weight', 'lip_probe.bias']


def test_lip_probe_trains_the_audio_net(face):
    _, audio, _ = _inputs(1)
    face.zero_grad()
    face.lip_probe(face.encode_audio(audio)).square().sum().backward()
    assert face.lip_probe.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in face.audio_net.parameters())
    assert all(p.grad is None for p in face.encoder.parameters())  # position features play no part


def test_param_groups_cover_each_parameter_once(face):
    groups = face.param_groups(lr_grid=5e-3, lr_net=5e-4)
    ids = [id(p) for g in groups for p in g['params']]
    assert len(ids) == len(set(ids)) == len(list(face.parameters()))
    assert groups[2]['lr'] == pytest.approx(2.5e-3) and groups[2]['weight_decay'] == 1e-4
    torch.optim.AdamW(groups)  # accepted as given


def test_deformation_algebra_and_apply():
    n = 4
    a = Deformation(torch.ones(n, 3), torch.full((n, 3), 0.5), None)
    b = Deformation(torch.full((n, 3), 2.), None, torch.tensor([0., 1., 0., 0.]).expand(n, 4))
    c = a + b
    assert_close(c.d_means, torch.full((n, 3), 3.)); assert_close(c.d_scales, a.d_scales); assert c.d_quats is b.d_quats
    assert_close(c.scale_means(torch.tensor([1., 2., 3.])).d_means, torch.tensor([3., 6., 9.]).expand(n, 3))
    assert_close(c.scale_means(torch.full((n, 1), 0.5)).d_means, torch.full((n, 3), 1.5))
    g = {'means': torch.zeros(n, 3), 'scales': torch.zeros(n, 3), 'quats': torch.tensor([1., 0, 0, 0]).expand(n, 4),
         'opacities': torch.zeros(n)}
    out = apply_deformation(g, c)
    assert_close(out['means'], c.d_means); assert_close(out['scales'], c.d_scales)
    assert_close(out['quats'], torch.tensor([1., 1., 0., 0.]).expand(n, 4) / 2 ** 0.5)
    assert out['opacities'] is g['opacities']
    only_means = apply_deformation(g, Deformation(torch.ones(n, 3)))
    assert only_means['scales'] is g['scales'] and only_means['quats'] is g['quats']


def test_universal_personal_aligner_compose_without_editing(face):
    "The adaptation-stage composition: query offset and per-axis scale around U, plus a personalized residual."
    torch.manual_seed(2)
    personal = MotionField(face_motion_config(hidden_dim=32, grid=TriPlaneConfig(backend='torch')))
    means, audio, aus = _inputs(300)
    offset, tau = torch.randn(300, 3) * 1e-3, 1 + 0.25 * torch.tanh(torch.randn(300, 3) / 5)
    d = face(means + offset, audio, aus).scale_means(tau) + personal(means, audio, aus)
    u, p = face(means + offset, audio, aus), personal(means, audio, aus)
    assert_close(d.d_means, u.d_means * tau + p.d_means)
    assert_close(d.d_quats, u.d_quats + p.d_quats)
    assert personal.deform_net.layers[0].out_features == 32


@pytest.mark.parametrize('name', ['face', 'mouth'])
@pytest.mark.parametrize('parts', ['universal', 'composed'])
def test_cached_inference_path_matches_forward(name, parts):
    "Without grad, `Branch.deformation` reads each field's `MotionCache`: equal to the fields' forward, for any composition."
    from instag.talking_head import Conditions, SynthesizerConfig, TalkingHead, face_branch_config, mouth_branch_config
    torch.manual_seed(0)
    extra = dict(personal_hidden=16, aligner_hidden=16) if parts == 'composed' else {}
    head = TalkingHead(SynthesizerConfig(face=face_branch_config(**extra), mouth=mouth_branch_config(**extra)), seed=0)
    branch = head.branch(name)
    with torch.no_grad():  # fields with real structure: grid features and weights far from their tiny init
        for p in branch.parameters():
            if p is not branch.gaussians['means']: p.copy_(torch.randn_like(p) * 0.3)
    g = torch.Generator().manual_seed(1)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.detach().abs().max()))
    for hook in (None, torch.randn(3, generator=g)):
        cond = Conditions(torch.randn(8, 16, 80, generator=g), torch.rand(6, generator=g) * 2)
        slow = branch.deformation(cond, hook)
        with torch.no_grad(): fast = branch.deform(cond, hook)[1]
        assert float(slow.d_means.detach().abs().max()) > 1e-3   # not a comparison of zeros
        # float32 sums in another order (one matmul over [H | C] vs its split): tolerances relative to the scale
        close(fast.d_means, slow.d_means)
        if name == 'face': close(fast.d_quats, slow.d_quats); close(fast.d_scales, slow.d_scales)
        close(fast.audio_code, slow.audio_code)   # the code the lip probe reads, the same on both paths
    if name == 'mouth':  # the hook reaches the mouth field on both paths
        with torch.no_grad(): assert not torch.allclose(branch.deformation(cond, None).d_means, fast.d_means)
    # the cache follows training: a changed weight changes the next inference
    with torch.no_grad(): branch.universal.deform_net.layers[0].weight.mul_(2)
    with torch.no_grad(): again = branch.deform(cond, hook)[1]
    close(again.d_means, branch.deformation(cond, hook).d_means)
    if parts == 'composed':  # and so does a changed aligner
        with torch.no_grad(): branch.aligner.net.layers[0].weight.mul_(-1)
        with torch.no_grad(): again = branch.deform(cond, hook)[1]
        close(again.d_means, branch.deformation(cond, hook).d_means)


@pytest.mark.parametrize('cin,cout,k,s,p,L', [(80, 32, 3, 2, 1, 16), (32, 16, 3, 1, 1, 8), (5, 7, 4, 3, 2, 11)])
def test_conv1d_mm_equals_conv1d(cin, cout, k, s, p, L):
    from instag.motion import Conv1dMM, conv1d_mm
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv1d(cin, cout, k, s, p).double()
    x = torch.randn(3, cin, L, generator=g, dtype=torch.float64, requires_grad=True)
    ours, ref = conv1d_mm(x, conv), conv(x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((ours * w).sum(), (x, conv.weight, conv.bias))
    want = torch.autograd.grad((ref * w).sum(), (x, conv.weight, conv.bias))
    for a, b in zip(got, want): torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    mm = Conv1dMM(cin, cout, k, s, p).double()
    mm.load_state_dict(conv.state_dict())                       # the same keys as nn.Conv1d
    torch.testing.assert_close(mm(x), ref, rtol=1e-12, atol=1e-12)

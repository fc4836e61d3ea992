"""Identity-free pre-training on tiny data: exact resume, the contrast loss's gradients, the prior and its checks."""
import json, pickle, subprocess, sys
from pathlib import Path

import pytest
import torch

from instag.example_data import write_example_dataset
from instag.pretrain import contrast_loss, pretrain, pretrain_config, read_corpus, resume_pretrain
from instag.prior import check_prior, load_prior
from instag.trainer import Callback
from helpers import KillAt, Killed, assert_injected

TINY = dict(face_iterations=6, mouth_iterations=5, face_static_iterations=1, mouth_static_iterations=1,
            synthesizer__face__init_points=80, synthesizer__mouth__init_points=40, negatives=0, ema_every=1,
            data__audio='mel', threads=1, densify__refine_start=1, densify__refine_every=2, densify__refine_stop=1,
            densify__grad_threshold=1e-7, mouth_grad_threshold=1e-7, checkpoint_every_s=1e9, checkpoint_every_steps=3)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('corpus')
    for k in range(3): write_example_dataset(root / f'id{k}', frames=20, size=40, val_frames=6)
    return root




def test_pretraining_resumes_exactly(corpus, tmp_path):
    cfg = pretrain_config('cpu', **TINY)
    full = pretrain(corpus, cfg, run_dir=tmp_path / 'full', verbose=False)
    with pytest.raises(Killed):  # after face 6 + mouth 2: the last checkpoint is face's end (mouth step 3 not reached)
        pretrain(corpus, cfg, run_dir=tmp_path / 'killed', verbose=False, callbacks=[KillAt(8)])
    resumed = resume_pretrain(tmp_path / 'killed', verbose=False)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    for k, v in full.extra['ema'].items(): torch.testing.assert_close(resumed.extra['ema'][k], v, rtol=0, atol=0, msg=k)
    strip = lambda h: [{k: v for k, v in r.items() if k != 'seconds'} for r in h]
    assert strip(full.history) == strip(resumed.history)
    assert any(len(h.face) != 80 for h in full.model.heads), 'the tiny run should have densified'
    p = load_prior(tmp_path / 'full')
    assert [c['name'] for c in p['corpus']] == ['id0', 'id1', 'id2'] and all(c['hash'] for c in p['corpus'])
    assert (tmp_path / 'full' / 'prior.pt').stat().st_size < 5 * 2**20


def test_contrast_loss_pushes_only_the_current_identity():
    torch.manual_seed(0)
    d_i = torch.randn(50, 3, requires_grad=True)
    d_j = torch.randn(50, 3, requires_grad=True)
    loss = contrast_loss(d_i, [d_j.detach()])
    loss.backward()
    want = (torch.relu((d_i * d_j).sum(-1)) > 0).float()[:, None] * d_j / 50   # d/d(d_i) of mean relu(<d_i, d_j>)
    torch.testing.assert_close(d_i.grad, want.detach())
    assert d_j.grad is None


def test_contrast_term_does_not_train_the_negatives(corpus, tmp_path):
    "One face step: identity i's personalized field gets gradients from the contrast term, the others' fields none."
    from instag.pretrain import make_pretrainer, _datasets
    cfg = pretrain_config('cpu', **{**TINY, 'face_static_iterations': 0, 'losses__lip_weight': 0.0})
    cfg = cfg.replace(synthesizer__face__motion__audio_in_dim=80, synthesizer__mouth__motion__audio_in_dim=80)
    t = make_pretrainer(cfg, _datasets(read_corpus(corpus), cfg), tmp_path / 'r', verbose=False)
    t.setup_stage()
    s = t.sampler.sample()
    for o in t.optimizers.values(): o.zero_grad(set_to_none=True)
    out = t._forward(s)
    from instag.trainer import LOSS_TERMS
    c = LOSS_TERMS['contrast'](t, out)
    assert c is not None and float(c.detach()) >= 0
    (c + out.parts['personal'].d_means.sum() * 0).backward()
    grads = [any(p.grad is not None for p in h.face.personal.parameters()) for h in t.model.heads]
    assert grads[s.identity] and not any(g for j, g in enumerate(grads) if j != s.identity)
    # the hinge is on d_mu in units of contrast_unit (default 1 m): in the fields' unit (1e-2 m) the same step costs 1e4x
    assert t.cfg.contrast_unit == 1.0
    t.cfg = t.cfg.replace(contrast_unit=1e-2)
    c_units = LOSS_TERMS['contrast'](t, out)
    assert float(c.detach()) > 0
    torch.testing.assert_close(c.detach() * 1e4, c_units, rtol=1e-5, atol=0.0)


def test_corpus_refuses_adaptation_targets_and_too_few(corpus, tmp_path):
    from instag.core import UserError
    one = tmp_path / 'one'; one.mkdir()
    (one / 'only').symlink_to(corpus / 'id0')
    with pytest.raises(UserError, match='at least 2 identities'): read_corpus(one)
    bad = tmp_path / 'bad'; bad.mkdir()
    for n in ('id0', 'id1'): (bad / n).symlink_to(corpus / n)
    (bad / 'mimictalk_german_20s').symlink_to(corpus / 'id2')
    with pytest.raises(UserError, match='adaptation target'): read_corpus(bad)
    listing = tmp_path / 'list.txt'; listing.write_text(f'{corpus / "id0"}\n# a comment\n{corpus / "id1"}\n')
    assert [p.name for p in read_corpus(listing)] == ['id0', 'id1']


def test_prior_is_loaded_without_unpickling_code(tmp_path):
    "A crafted prior.pt whose unpickling would create a file: refused in one line, the file not created."
    from instag.core import UserError
    marker = tmp_path / 'pwned'
    class Boom:
        def __reduce__(self): return (Path.touch, (marker,))
    path = tmp_path / 'prior.pt'
    torch.save({'kind': 'instag-prior', 'x': Boom()}, path)
    with pytest.raises(UserError, match='not a readable instag prior'): load_prior(path)
    assert not marker.exists()
    r = subprocess.run([sys.executable, '-m', 'instag', 'priors', '--json', '--root', str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0 and 'Traceback' not in r.stderr and not marker.exists()
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert any(row['path'] == str(path) and 'error' in row for row in rows)


def test_viewer_opens_a_pretraining_run_per_identity(corpus, tmp_path):
    "instag view on a pre-training run: pick an identity; universal only or universal + its own personalized fields."
    from instag.core import UserError
    from instag.view.scenes import head_scene, pretrain_head, scene_from_path
    from instag.view.viewer import ViewState, make_render_fn
    trained = pretrain(corpus, pretrain_config('cpu', **TINY), run_dir=tmp_path / 'run', verbose=False).model.heads[2]
    scene = scene_from_path(tmp_path / 'run', identity=2)
    assert scene.components == ('universal', 'universal + personal') and 'id2' in scene.name
    track, frame = next(iter(scene.tracks)), 1
    u, up = (scene.deform(track, frame, c) for c in scene.components)
    # the face's means move by exactly identity 2's trained personalized d_mu more (not 0, not another identity's field)
    with torch.no_grad():
        d_personal = trained.face.deformation(pretrain_head(tmp_path / 'run', 2).conditions(frame), parts=('personal',)).d_means
    torch.testing.assert_close(up['face']['means'] - u['face']['means'], d_personal, rtol=1e-3, atol=1e-7)
    d_universal = u['face']['means'] - scene.canonical['face']['means']
    assert d_personal.norm() > 0.05 * d_universal.norm(), 'the personalized d_mu is a real part of the motion'
    assert not torch.equal(up['mouth']['means'], u['mouth']['means'])
    # rendered: the choice reaches the image (personal d_mu magnified to move pixels) and is the only difference (personal zeroed)
    renders = lambda scene: [rf(scene.cameras[0], ViewState(frame=frame, components=c)).astype(int)
                             for rf in [make_render_fn(scene)] for c in scene.components]
    for gain, differ in ((1e3, True), (0.0, False)):
        head = pretrain_head(tmp_path / 'run', identity=2)
        with torch.no_grad():
            for branch in ('face', 'mouth'):
                personal = getattr(head.model, branch).personal
                if gain: personal.means_axis_scale.mul_(gain)
                else: personal.deform_net.layers[-1].weight.zero_()
        a, b = renders(head_scene(head, 'id2'))
        assert a.shape == b.shape == (40, 40, 3)
        assert (abs(a - b).mean() > 0.5) if differ else (a == b).all()
    with pytest.raises(UserError, match='identities 0..2'): scene_from_path(tmp_path / 'run', identity=3)


def test_experiment_notebook_runs_under_papermill(corpus, tmp_path):
    import papermill as pm
    from instag.pretrain import run_notebook
    params = {**{k: v for k, v in TINY.items() if k != 'checkpoint_every_steps'}, 'seed': 4}
    run = run_notebook(corpus, root=tmp_path, evaluate_frames=2, **params)
    assert (run / 'pretrain.ipynb').exists() and (run / 'prior.pt').exists() and (run / 'metrics.json').exists()
    assert_injected(run, params)
    with pytest.raises(pm.PapermillExecutionError, match='negatives'):
        run_notebook(corpus, root=tmp_path, negative=3)


def test_pretraining_without_personalized_fields_leaves_a_prior(corpus, tmp_path):
    "The protocol's ablation: personal_hidden = 0 trains the universal fields and the Gaussians only."
    cfg = pretrain_config('cpu', **{**TINY, 'synthesizer__face__personal_hidden': 0, 'synthesizer__mouth__personal_hidden': 0})
    t = pretrain(corpus, cfg, run_dir=tmp_path / 'run', verbose=False)
    assert all(h.face.personal is None and h.mouth.personal is None for h in t.model.heads)
    assert set(load_prior(tmp_path / 'run' / 'prior.pt')['universal_ema']) == {'face', 'mouth'}
    from instag.pretrain_eval import evaluate_pretrain
    r = evaluate_pretrain(tmp_path / 'run', frames=2, lmd=False)   # what the protocol's template runs after it
    assert r['motion']['face'] == dict(personal_cosine=None, universal_share=1.0)

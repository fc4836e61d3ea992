"""Motion-aligned adaptation: the geometry prior's frame, one face-mouth hook everywhere, exact resume, bad input."""
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instag.adapt import adapt, adapt_config, resume_adapt
from instag.camera import Camera
from instag.losses import depth_prior_loss, normal_prior_loss
from instag.render import head_gaussians, quat_to_rotmat, render
from instag.train import Callback
from helpers import KillAt, Killed, assert_injected

TINY = dict(seconds=2.0, face_iterations=8, mouth_iterations=6, fuse_iterations=3, static_iterations=1,
            warmup_iterations=3, losses__geometry_start=2, synthesizer__face__init_points=150,
            synthesizer__mouth__init_points=80, densify__refine_start=2, densify__refine_every=3, densify__refine_stop=1,
            densify__grad_threshold=1e-7, mouth_grad_threshold=1e-7, checkpoint_every_s=1e9, checkpoint_every_steps=3,
            eval_frames=2, eval_lmd=False, threads=1)


@pytest.fixture(scope='module')
def person(tmp_path_factory) -> Path:
    from instag.synth.corpus import synthesize
    out = tmp_path_factory.mktemp('synth')
    return synthesize(identities=1, seconds=3, size=48, seed=11, out=out / 'corpus', progress=False, video=False)[0]


# ---- geometry prior: camera frame ---------------------------------------------------------------------------------

def _quat_mul(a, b):  # wxyz
    w1, x1, y1, z1 = a.unbind(-1); w2, x2, y2, z2 = b.unbind(-1)
    return torch.stack([w1*w2 - x1*x2 - y1*y2 - z1*z2, w1*x2 + x1*w2 + y1*z2 - z1*y2,
                        w1*y2 - x1*z2 + y1*w2 + z1*x2, w1*z2 + x1*y2 - y1*x2 + z1*w2], -1)


def _rotate_head(g, R, q):
    "The head turned by R (quaternion q) about the world origin."
    return {**g, 'means': g['means'] @ R.T, 'quats': _quat_mul(q.expand_as(g['quats']), g['quats'])}


def _geometry(g, cam):
    out = render(g, cam.viewmat, cam.K, cam.width, cam.height, backend='torch')
    alpha = out.alpha[..., 0]
    return out.depth[..., 0] / alpha.clamp_min(1e-6), out.normal, alpha > 0.5


def test_geometry_loss_is_zero_on_its_prior_and_follows_the_camera_frame():
    g, cam = head_gaussians(3000, seed=0), Camera.orbit(0.6, size=64)
    depth, normal, region = _geometry(g, cam)
    prior_n = F.normalize(normal, dim=-1) * region[..., None]
    prior_d = torch.where(region, depth, torch.zeros_like(depth))
    assert float(depth_prior_loss(depth, prior_d, region)) < 1e-5
    assert float(normal_prior_loss(normal, prior_n, region)) < 1e-5
    # the head turned 25 degrees about y, and the camera turned with it: the same image, the same camera-frame normals
    a = np.deg2rad(25.0)
    R = torch.tensor([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]], dtype=torch.float32)
    q = torch.tensor([np.cos(a / 2), 0, np.sin(a / 2), 0], dtype=torch.float32)
    turned = _rotate_head(g, R, q)
    assert torch.allclose(quat_to_rotmat(q[None])[0], R, atol=1e-6)
    c2w = torch.linalg.inv(cam.viewmat); c2w[:3] = R @ c2w[:3]
    cam_turned = Camera(torch.linalg.inv(c2w), cam.K, cam.width, cam.height)
    d2, n2, r2 = _geometry(turned, cam_turned)
    both = region & r2
    aligned = float(normal_prior_loss(n2, prior_n, both))
    assert aligned < 1e-3                                            # the rotated head with its rotated normals: unchanged
    assert float(depth_prior_loss(d2, prior_d, both)) < 1e-2
    # the same rotated normals expressed in the world frame (what the official code compares) no longer match the prior
    world = n2 @ cam_turned.viewmat[:3, :3]                        # camera -> world (rows of R_wc)
    assert float(normal_prior_loss(world, prior_n, both)) > 0.05
    # the head turned under a fixed camera (its normals not rotated with the prior): the loss rises
    d3, n3, r3 = _geometry(turned, cam)
    assert float(normal_prior_loss(n3, prior_n, region & r3)) > max(0.005, 10 * aligned)


# ---- one hook everywhere -----------------------------------------------------------------------------------------

class GrabHook(Callback):
    "The phi of every mouth-stage step, by frame."
    order = 99
    def __init__(self): self.seen = {}
    def before_fit(self, t):
        forward = t._forward
        def spy(s):
            out = forward(s)
            if out.hook is not None: self.seen[s.index] = out.hook.detach().clone()
            return out
        t._forward = spy


def test_the_face_mouth_hook_is_the_same_in_training_evaluation_render_and_viewer(person, tmp_path):
    from instag.inference import load_run
    from instag.view.scenes import trained_scene
    grab = GrabHook()
    t = adapt(person, adapt_config('cpu', **{**TINY, 'fuse_iterations': 0}), run_dir=tmp_path / 'run', verbose=False,
              evaluate=False, callbacks=[grab])
    assert grab.seen, 'the mouth stage saw no hook'
    i, phi_train = next(iter(grab.seen.items()))
    assert phi_train.abs().sum() > 0
    model = t.model.eval()
    f = t.ds.frame(i)
    with torch.no_grad(): phi_eval = model.deform(model.conditions(f.audio, f.aus)).hook            # evaluate's path
    head = load_run(t.run_dir)
    k = head.frames.index(i)                                                               # the loop frame of frame i
    phi_render = head.deform(k).hook                                                       # instag render's path
    torch.testing.assert_close(phi_eval, phi_train, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(phi_render, phi_train, rtol=1e-5, atol=1e-6)
    scene = trained_scene(t.run_dir)                                                       # the viewer's path
    mouth = scene.deform('training audio', k, 'universal + aligner')['mouth']['means']
    torch.testing.assert_close(mouth, head.deform(k).gaussians['mouth']['means'], rtol=0, atol=1e-6)


# ---- resume, records, bad input ------------------------------------------------------------------------------------



def test_adaptation_resumes_exactly_and_records_its_prior(person, tmp_path):
    from instag.prior import file_hash, load_prior, prior_fields
    cfg = adapt_config('cpu', **TINY)
    full = adapt(person, cfg, run_dir=tmp_path / 'full', verbose=False, evaluate=False)
    with pytest.raises(Killed):  # killed at iteration 12 (face 8 + mouth 4): the last checkpoint is mouth step 3
        adapt(person, cfg, run_dir=tmp_path / 'killed', verbose=False, evaluate=False, callbacks=[KillAt(12)])
    resumed = resume_adapt(tmp_path / 'killed', verbose=False, evaluate=False)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a: torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    run = json.loads((tmp_path / 'full' / 'run.json').read_text())
    prior = load_prior('synthetic')
    assert run['job'] == 'adapt' and run['prior']['name'] == 'synthetic' and run['prior']['hash'] == file_hash(prior['path'])
    # before any step the universal fields are the prior's EMA fields, and its audio statistics are kept
    zero = adapt(person, adapt_config('cpu', **{**TINY, 'face_iterations': 0, 'mouth_iterations': 0, 'fuse_iterations': 0}),
                 run_dir=tmp_path / 'zero', verbose=False, evaluate=False)
    ema = prior_fields(prior, ema=True)
    for b in ('face', 'mouth'):
        for key, v in ema[b].state_dict().items():
            torch.testing.assert_close(zero.model.branch(b).universal.state_dict()[key], v, rtol=0, atol=0, msg=f'{b}.{key}')


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'instag', 'adapt', *args], capture_output=True, text=True, timeout=300)


def test_adapt_refuses_a_wrong_prior_in_one_line(person, tmp_path):
    from instag.example_data import write_example_dataset
    deepspeech = write_example_dataset(tmp_path / 'ds', frames=20, size=48, val_frames=5)
    for args, says in (([str(person), '--prior', 'nosuch'], 'no prior'),
                       ([str(deepspeech), '--prior', 'synthetic'], 'log-mel'),
                       ([str(person), '-p', 'aligner=sideways'], 'aligner'),
                       (['--resume', str(tmp_path)], 'config.yaml')):
        r = _cli(*args, '--out', str(tmp_path / 'out'))
        assert r.returncode == 2, (args, r.stderr)
        assert 'Traceback' not in r.stderr and says in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_adapt_notebook_runs_under_papermill_and_the_run_renders(person, tmp_path):
    import av
    from instag.adapt import run_notebook
    from instag.audio import load_audio
    from instag.inference import main_render, stream_durations, video_frames_for
    from instag.layout import SAMPLE_RATE
    params = dict(seconds=2.0, face_iterations=3, mouth_iterations=2, fuse_iterations=1, eval_frames=2, seed=7,
                  synthesizer__face__init_points=100, synthesizer__mouth__init_points=50, eval_lmd=False, threads=1,
                  aligner='offset', warmup_iterations=1)
    run = run_notebook(person, root=tmp_path, **params)
    assert (run / 'adapt.ipynb').exists() and (run / 'metrics.json').exists()
    assert_injected(run, params)
    assert json.loads((run / 'run.json').read_text())['prior']['name'] == 'synthetic'
    out, seconds = tmp_path / 'talk.mp4', 0.5
    assert main_render([str(run), '--audio', str(person / 'aud.wav'), '--out', str(out), '--max-seconds', str(seconds), '--quiet']) == 0
    # the first half second of the speech, as whole video frames with the audio beside them (silence after it)
    wav = load_audio(person / 'aud.wav')[:int(seconds * SAMPLE_RATE)]
    d = stream_durations(out)
    assert set(d) == {'video', 'audio'}
    with av.open(str(out)) as c:
        fps = float(c.streams.video[0].average_rate)
        frames = sum(1 for _ in c.decode(video=0))
        c.seek(0)
        sound = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert frames == video_frames_for(len(wav), fps) and seconds <= frames / fps < seconds + 0.5
    assert abs(d['video'] - frames / fps) < 1e-3 and abs(d['audio'] - d['video']) < 1e-3
    loud = lambda x: float(np.sqrt(np.mean(np.square(x))))
    assert abs(loud(sound[:len(wav)]) / loud(wav) - 1) < 0.25, 'the video carries the speech, not silence'


def test_ctrl_c_stops_at_a_step_with_a_checkpoint_and_says_how_to_resume(person, tmp_path):
    import signal, time
    params = ['-p', 'face_iterations=100000', '-p', 'checkpoint_every_steps=5', '-p', 'checkpoint_every_s=1e9',
              '-p', 'synthesizer__face__init_points=100', '-p', 'synthesizer__mouth__init_points=50', '-p', 'threads=1']
    cmd = [sys.executable, '-m', 'instag', 'adapt', str(person), '--seconds', '2', '--out', str(tmp_path), '--quiet', *params]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(tmp_path.glob('adapt/*/checkpoint.pt')) and time.time() < deadline and p.poll() is None: time.sleep(0.2)
    assert p.poll() is None, p.stderr.read()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert 'Traceback' not in err and 'checkpoint saved' in err and '--resume' in err, err
    run = next(tmp_path.glob('adapt/*'))
    ck = torch.load(run / 'checkpoint.pt', weights_only=True)
    assert f"at face step {ck['step']};" in err and f'instag adapt --resume {run}' in err, err


@pytest.mark.parametrize('switch, check', [
    (dict(aligner='none'), lambda t: t.model.face.aligner is None and not any('aligner' in g for s in t.stages for g in s.train)),
    (dict(aligner='scale'), lambda t: t.model.face.cfg.aligner_mode == 'scale' and 'face.aligner' in t.stages[2].train),
    (dict(hook=False), lambda t: not t.model.cfg.hook and t.model.mouth.hook_scale is None),
    (dict(geometry=False), lambda t: not any('loss/geometry' in r for r in t.history)),
    (dict(prior='none'), lambda t: t.cfg.prior_hash == '' and t.model.face.aligner is None and t.cfg.warmup_lr_factor == 1.0),
])
def test_ablations_are_config_values(person, tmp_path, switch, check):
    cfg = adapt_config('cpu', **{**TINY, 'checkpoint_every_steps': 0, **switch})
    t = adapt(person, cfg, run_dir=tmp_path / 'run', verbose=False, evaluate=False)
    assert check(t), switch
    if switch.get('geometry', True): assert any('loss/geometry' in r for r in t.history)


def test_warm_up_cuts_only_the_universal_lr_then_every_motion_part_decays(person, tmp_path):
    seen = {}
    class Watch(Callback):
        order = 20  # after AdaptMotionLR (10)
        def before_step(self, t):
            if t.stage.name == 'face':
                seen[t.step] = {k: o.param_groups[0]['lr'] / o.param_groups[0]['initial_lr'] for k, o in t.optimizers.items()
                                if 'initial_lr' in o.param_groups[0]}
    adapt(person, adapt_config('cpu', **{**TINY, 'motion_lr_half_life': 4}), run_dir=tmp_path / 'run', verbose=False,
          evaluate=False, callbacks=[Watch()])
    assert seen[0]['face.universal'] == pytest.approx(0.1) and seen[0]['face.aligner'] == pytest.approx(1.0)
    assert seen[4]['face.universal'] == pytest.approx(0.5) and seen[4]['face.aligner'] == pytest.approx(0.5)


def test_adapt_from_a_local_pretraining_run(person, tmp_path):
    "`--prior PATH`: a pre-training run folder made here (on two other synthetic people) is adapted like a shipped prior."
    from instag.pretrain import pretrain, pretrain_config
    from instag.synth.corpus import synthesize
    corpus = tmp_path / 'corpus'
    synthesize(identities=2, seconds=2, size=48, seed=21, out=corpus, progress=False, video=False)
    pre = pretrain(corpus, pretrain_config('cpu', face_iterations=4, mouth_iterations=3, face_static_iterations=1,
                                            mouth_static_iterations=1, synthesizer__face__init_points=60,
                                            synthesizer__mouth__init_points=30, threads=1, checkpoint_every_s=1e9),
                   run_dir=tmp_path / 'pre', verbose=False)
    r = _cli(str(person), '--prior', str(pre.run_dir), '--seconds', '2', '--out', str(tmp_path / 'out'), '--quiet',
             '-p', 'face_iterations=3', '-p', 'mouth_iterations=2', '-p', 'fuse_iterations=1', '-p', 'eval_frames=2',
             '-p', 'eval_lmd=false', '-p', 'synthesizer__face__init_points=60', '-p', 'synthesizer__mouth__init_points=30')
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads(next((tmp_path / 'out').glob('adapt/*/run.json')).read_text())
    assert run['prior']['path'] == str(pre.run_dir / 'prior.pt') and len(run['prior']['hash']) == 16


def test_a_prior_hears_its_own_features_and_refuses_others(tmp_path):
    "A prior pre-trained on speech encoder features: adapt reads those, a log-mel prior reads log-mel from the same dataset,"
    "a dataset without them is refused in one line that names both, and the head renders new audio through the same encoder."
    from instag.prepare.pipeline import add_encoder_features
    from instag.prepare.speech_encoder import DEFAULT_ENCODER, encoder_status
    if encoder_status(DEFAULT_ENCODER): pytest.skip(encoder_status(DEFAULT_ENCODER))
    from instag.pretrain import pretrain, pretrain_config
    from instag.synth.corpus import synthesize
    corpus = synthesize(identities=2, seconds=2, size=48, seed=21, out=tmp_path / 'corpus', progress=False, video=False)
    target, bare = synthesize(identities=2, seconds=3, size=48, seed=12, out=tmp_path / 'targets', progress=False, video=False)
    for ds in (*corpus, target): add_encoder_features(ds, DEFAULT_ENCODER)
    pre = pretrain(tmp_path / 'corpus', pretrain_config('cpu', face_iterations=3, mouth_iterations=2, face_static_iterations=1,
                                                        mouth_static_iterations=1, synthesizer__face__init_points=60,
                                                        synthesizer__mouth__init_points=30, threads=1, checkpoint_every_s=1e9),
                   run_dir=tmp_path / 'pre', verbose=False)
    assert pre.info['audio']['kind'] == 'whisper' and pre.info['audio']['dim'] == 512
    small = {**TINY, 'face_iterations': 2, 'mouth_iterations': 2, 'fuse_iterations': 1, 'eval_frames': 0}
    t = adapt(target, adapt_config('cpu', prior=str(pre.run_dir), **small), run_dir=tmp_path / 'enc', verbose=False, evaluate=False)
    assert t.cfg.data.audio == 'whisper' and t.ds.audio_features.shape[-1] == 512
    t = adapt(target, adapt_config('cpu', prior='synthetic', **small), run_dir=tmp_path / 'mel', verbose=False, evaluate=False)
    assert t.cfg.data.audio == 'mel' and t.ds.audio_features.shape[-1] == 80
    r = _cli(str(bare), '--prior', str(pre.run_dir), '--out', str(tmp_path / 'out'))
    assert r.returncode == 2 and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'pre-trained on whisper (whisper-base' in r.stderr and 'log-mel (80-dim)' in r.stderr and 'instag prepare' in r.stderr
    from instag.inference import load_run
    head = load_run(tmp_path / 'enc')
    feats = head.features(np.zeros(16000, np.float32) + 0.01 * np.random.default_rng(0).standard_normal(16000).astype(np.float32))
    assert feats.shape == (25, 2, 512)

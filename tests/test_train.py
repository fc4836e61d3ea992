"""Training, resuming, rendering and the experiment notebook on a tiny dataset (seconds each on 2 cores)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from instag.example_data import write_example_dataset
from instag.train import Callback, resume, train, train_config
from helpers import KillAt, Killed, assert_injected

# a tiny run that still densifies (face and mouth) and checkpoints every 3 iterations
TINY = dict(seconds=0.4, face_iterations=8, mouth_iterations=6, fuse_iterations=3, static_iterations=2,
            synthesizer__face__init_points=120, synthesizer__mouth__init_points=60, densify__refine_start=2,
            densify__refine_every=3, densify__refine_stop=1, densify__grad_threshold=1e-7, mouth_grad_threshold=1e-7,
            checkpoint_every_s=1e9, checkpoint_every_steps=3, eval_frames=2, eval_lmd=False, threads=1, data__audio='mel')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp('ds') / 'ds', frames=20, size=48, val_frames=6)




def _state(t) -> dict:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


@pytest.mark.parametrize('background', ['white', 'random'])  # random: the colours come from the checkpointed generator
def test_resume_reproduces_uninterrupted_run(dataset, tmp_path, background):
    cfg = train_config('cpu', **TINY, region_background='random' if background == 'random' else (1.0, 1.0, 1.0))
    full = train(dataset, cfg, run_dir=tmp_path / 'full', verbose=False, evaluate=False)
    with pytest.raises(Killed):  # killed at iteration 12 (face 8 + mouth 4): the last checkpoint is mouth step 3
        train(dataset, cfg, run_dir=tmp_path / 'killed', verbose=False, evaluate=False, callbacks=[KillAt(12)])
    ck = torch.load(tmp_path / 'killed' / 'checkpoint.pt', weights_only=True)  # tensors and plain data only
    assert (ck['stage_index'], ck['step']) == (1, 3)
    resumed = resume(tmp_path / 'killed', verbose=False, evaluate=False)
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    assert full.model.num_gaussians() == resumed.model.num_gaussians()
    assert len(full.model.face) != 120, 'the tiny run should have densified'
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    strip = lambda h: [{k: v for k, v in r.items() if k != 'seconds'} for r in h]
    assert strip(full.history) == strip(resumed.history)


def test_render_streams_have_equal_duration(dataset, tmp_path):
    import av
    from instag.audio import write_wav
    from instag.inference import main_render, stream_durations
    t = train(dataset, train_config('cpu', **{**TINY, 'face_iterations': 3, 'mouth_iterations': 2, 'fuse_iterations': 1}),
              run_dir=tmp_path / 'run', verbose=False, evaluate=False)
    wav = tmp_path / 'speech.wav'  # 1.37 s at 44.1 kHz: resampled, and not a whole number of frames
    write_wav(wav, 0.2 * np.sin(np.arange(int(1.37 * 44100)) / 44100 * 2 * np.pi * 180), sample_rate=44100)
    out = tmp_path / 'talk.mp4'
    assert main_render([str(t.run_dir), '--audio', str(wav), '--out', str(out), '--quiet']) == 0
    d = stream_durations(out)
    assert set(d) == {'video', 'audio'}
    assert abs(d['video'] - d['audio']) < 1e-3 and d['video'] >= 1.37
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, c.streams.audio[0].codec_context.name) == ('h264', 'aac')
        assert (v.width, v.height) == (48, 48)


def test_experiment_notebook_runs_under_papermill(dataset, tmp_path):
    from instag.train import run_notebook
    params = dict(seconds=0.4, face_iterations=3, mouth_iterations=2, fuse_iterations=1, eval_frames=2, seed=5,
                  synthesizer__face__init_points=100, synthesizer__mouth__init_points=50, data__audio='mel',
                  eval_lmd=False, threads=1)
    run = run_notebook(dataset, root=tmp_path, **params)
    assert (run / 'train.ipynb').exists() and (run / 'metrics.json').exists()
    assert_injected(run, params)
    nb = json.loads((run / 'train.ipynb').read_text())
    assert any('injected-parameters' in c['metadata'].get('tags', []) for c in nb['cells'])
    assert 'psnr' in json.loads((run / 'metrics.json').read_text())


def test_experiment_notebook_refuses_unknown_parameters(dataset, tmp_path):
    import papermill as pm
    from instag.train import run_notebook
    with pytest.raises(pm.PapermillExecutionError, match='face_iters'):
        run_notebook(dataset, root=tmp_path, face_iters=3)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    from instag.demo import demo
    r = demo(tmp_path / 'demo', seconds=1.0, clip_seconds=3.0, size=64, verbose=False, face_iterations=20,
             mouth_iterations=10, fuse_iterations=5, warmup_iterations=5, eval_frames=4, eval_lmd=False)
    assert Path(r['video']).exists() and Path(r['still']).exists()
    assert r['psnr_adapted'] is not None and r['psnr_scratch'] is not None and r['seconds'] > 0


class ProbeAtStart(Callback):
    "Copies of the lip probes' weights before the first step."
    def before_fit(self, t):
        self.face, self.mouth = (t.model.branch(b).universal.lip_probe.weight.detach().clone() for b in ('face', 'mouth'))


def test_lip_loss_trains_the_probe_and_sampling_favours_open_mouths(dataset, tmp_path):
    import shutil
    ds = tmp_path / 'ds'
    shutil.copytree(dataset, ds)
    opening = np.random.default_rng(0).uniform(0.0, 0.1, 64).astype(np.float32)  # what prepare measures per frame
    (ds / 'instag').mkdir(exist_ok=True)
    np.save(ds / 'instag' / 'mouth_open.npy', opening)
    runs, start = {}, {}
    for w in (0.0, 1.0):
        cfg = train_config('cpu', **{**TINY, 'losses__lip_weight': w, 'lip_sampling': 3.0})
        start[w] = ProbeAtStart()
        runs[w] = train(ds, cfg, run_dir=tmp_path / f'w{w}', verbose=False, evaluate=False, callbacks=[start[w]])
    off, t = runs[0.0].model, runs[1.0].model
    assert torch.equal(off.face.universal.lip_probe.weight, start[0.0].face)  # off: the probe is never touched
    assert not torch.equal(t.face.universal.lip_probe.weight, start[1.0].face)
    assert not torch.equal(t.mouth.universal.lip_probe.weight, start[1.0].mouth)
    t = runs[1.0]
    w, o = t.sampler.weights, torch.from_numpy(opening)[t.train_ids]
    assert w[o.argmax()] == pytest.approx(4.0) and w[o.argmin()] == pytest.approx(1.0)
    assert torch.equal(w.argsort(), o.argsort())
    z = t.sampler.lip_target[t.train_ids]  # standardized over the training frames
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-5) and float(z.std()) == pytest.approx(1.0, abs=1e-4)


def test_no_mouth_opening_means_uniform_sampling_and_no_lip_loss(dataset, tmp_path):
    t = train(dataset, train_config('cpu', **{**TINY, 'losses__lip_weight': 1.0, 'lip_sampling': 3.0,
                                               'face_iterations': 2, 'mouth_iterations': 1, 'fuse_iterations': 1}),
              run_dir=tmp_path / 'r', verbose=False, evaluate=False)
    assert t.sampler.weights is None and t.sampler.lip_target is None
    assert all('loss/lip' not in r for r in t.history)


def _frame(H=48, W=48):
    from instag.data import Frame
    from instag.layout import LABELS
    labels = torch.zeros(H, W, dtype=torch.uint8)
    labels[:, :20] = LABELS['face']          # face: the left columns
    labels[18:30, 32:44] = LABELS['mouth']   # inside the mouth: far from the face
    g = torch.Generator().manual_seed(0)
    return Frame(0, torch.rand(H, W, 3, generator=g), labels, torch.zeros(H, W, 3), None, torch.zeros(8, 16, 80),
                 torch.zeros(6))


def region_loss(rgb, alpha, frame, stage, colour, L):
    "The photometric and alpha terms of a branch stage, as the trainer sums them."
    from types import SimpleNamespace
    from instag.trainer import Sample, Stage, StepOutput, region_target, term_alpha, term_photometric
    pred, target, care, mask = region_target(rgb, alpha, frame, stage, colour)
    t = SimpleNamespace(cfg=SimpleNamespace(losses=L))
    s = StepOutput(Sample(0, frame), Stage(stage, 1, stage, (), ()), pred, target, care, alpha, mask)
    return term_photometric(t, s) + term_alpha(t, s), pred, target


@pytest.mark.parametrize('stage', ['face', 'mouth'])
def test_region_loss_where_each_branch_is_judged(stage):
    from instag.losses import LossConfig
    f, L, white = _frame(), LossConfig(), torch.ones(3)
    g = torch.Generator().manual_seed(1)
    rgb, alpha = torch.rand(48, 48, 3, generator=g) * 0.5, torch.full((48, 48, 1), 0.5)
    base, pred, target = region_loss(rgb, alpha, f, stage, white, L)
    region = f.face_mask if stage == 'face' else f.mouth_mask
    assert torch.equal(target[region], f.image[region]) and bool((target[~region] == 1).all())
    torch.testing.assert_close(pred, rgb + 0.5 * white)
    # a change deep inside the face region (6+ px from anything else: the SSIM window is 11 px wide)
    under_face = rgb.clone(); under_face[10:38, 2:12] = 0.9
    changed = float(region_loss(under_face, alpha, f, stage, white, L)[0])
    if stage == 'mouth': assert changed == pytest.approx(float(base), rel=1e-6)  # the face covers it: no loss there
    else: assert changed != pytest.approx(float(base), rel=1e-3)
    # a change in the open background counts for both branches (it must stay transparent there)
    outside = rgb.clone(); outside[2:8, 30:46] = 0.9
    assert float(region_loss(outside, alpha, f, stage, white, L)[0]) != pytest.approx(float(base), rel=1e-3)


def test_a_killed_render_leaves_the_earlier_video_intact(dataset, tmp_path):
    import signal, subprocess, sys, time
    from instag.audio import write_wav
    from instag.inference import main_render, stream_durations
    t = train(dataset, train_config('cpu', **{**TINY, 'face_iterations': 2, 'mouth_iterations': 1, 'fuse_iterations': 1}),
              run_dir=tmp_path / 'run', verbose=False, evaluate=False)
    out, short, long = tmp_path / 'talk.mp4', tmp_path / 'short.wav', tmp_path / 'long.wav'
    write_wav(short, 0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 200), sample_rate=16000)
    write_wav(long, 0.1 * np.sin(np.arange(16000 * 120) / 16000 * 2 * np.pi * 200), sample_rate=16000)
    assert main_render([str(t.run_dir), '--audio', str(short), '--out', str(out), '--quiet']) == 0
    before = out.read_bytes()
    p = subprocess.Popen([sys.executable, '-m', 'instag', 'render', str(t.run_dir), '--audio', str(long), '--out', str(out),
                          '--overwrite', '--quiet'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial, deadline = tmp_path / '.talk.partial.mp4', time.time() + 120
    while not (partial.exists() and partial.stat().st_size > 0) and time.time() < deadline and p.poll() is None: time.sleep(0.1)
    assert p.poll() is None, p.stderr.read()
    p.send_signal(signal.SIGKILL); p.wait(timeout=30)
    assert out.read_bytes() == before and abs(stream_durations(out)['video'] - 1.28) < 0.05  # 32 frames: 1 s rounded up to 8

"""The evaluation protocol's metrics on known answers: identical frames, a shifted mouth, a time-shifted video, and
`instag evaluate RUN --json` with every key."""
import json, subprocess, sys

import numpy as np
import pytest

from instag.lipsync import load_lipsync, sync_score
from instag.metrics import LIP_LANDMARKS, aue, lip_gap, lmd
from helpers import has_mediapipe


def test_lmd_known_answer():
    rng = np.random.default_rng(1)
    truth = rng.uniform(80, 176, (4, 478, 2))
    assert lmd(truth, truth, 256) == 0
    assert lmd(truth + [5.0, 1.0], truth, 256) == pytest.approx(0, abs=1e-9)  # mean-centred: a moved mouth is not an error
    moved = truth.copy(); moved[:, [LIP_LANDMARKS[0]], 1] += 8.0              # one of N points 8 px off
    N = len(LIP_LANDMARKS)
    assert lmd(moved, truth, 128) == pytest.approx(2 * 8 * (1 / N) * (1 - 1 / N) * 512 / 128)
    with pytest.raises(ValueError): lmd(truth[:2], truth, 256)


def test_sync_score_finds_a_known_offset():
    rng = np.random.default_rng(2)
    pred = np.convolve(rng.normal(size=250), np.ones(3) / 3, 'same')
    for lag in (-7, 0, 4):
        s = sync_score(np.roll(pred, lag) + 0.5 * rng.normal(size=250), pred)
        assert s['sync_offset'] == lag and s['sync_conf'] > 0.3, (lag, s)


def _frames(path, n, size=256):
    import av
    from PIL import Image
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            out.append(np.asarray(f.to_image().resize((size, size), Image.BILINEAR)))
            if len(out) == n: break
    return out


@pytest.fixture(scope='module')
def german(tmp_path_factory):
    if not has_mediapipe(): pytest.skip('mediapipe 0.10.21 has no wheels for this Python (3.13+): the face mesh cannot run')
    from conftest import shared_data_path
    from instag.audio import load_audio
    path = shared_data_path() / 'mimictalk_german_20s.mp4'
    return _frames(path, 250), load_audio(path)


def test_identical_frames_score_perfectly(german):
    from instag.evaluate import _corr_found, face_mesh_metrics
    frames = german[0][:60]
    m = face_mesh_metrics(frames, frames)
    assert m['lmd_frames'] == 60 and m['lmd'] == 0 and m['aue_u'] == 0 and m['aue_l'] == 0
    assert _corr_found(m['open_render'], m['open_truth']) == pytest.approx(1)


def test_a_mouth_drawn_lower_scores_worse_below_than_above(german):
    from instag.evaluate import face_mesh_metrics
    frames = german[0][:60]
    moved = []
    for f in frames:  # the lower face (from the mouth down) drawn 6 px lower: the jaw looks dropped
        g = f.copy(); g[180 + 6:] = f[180:-6]; moved.append(g)
    m = face_mesh_metrics(moved, frames)
    assert m['lmd'] > 1.0, m
    assert m['aue_l'] > 2 * m['aue_u'], m


def test_a_time_shifted_video_moves_the_sync_offset(german):
    from instag.evaluate import lip_sync_metrics, track_mesh
    frames, wav = german
    gap = lip_gap(track_mesh(frames).landmarks)
    base = lip_sync_metrics(gap, gap, wav, 25)
    assert abs(base['sync_offset']) <= 3 and base['sync_conf'] > 0.2, base   # the real video is in sync
    assert base['sync_conf_floor'] < base['sync_conf'] - 0.1, base           # the floor: 2 s off
    late = lip_sync_metrics(np.r_[np.full(6, gap[0]), gap[:-6]], None, wav, 25)   # the video 6 frames late
    assert late['sync_offset'] == base['sync_offset'] + 6, (base, late)


def test_the_shipped_lipsync_regressor_has_its_card():
    m = load_lipsync()
    assert m.card['speakers'] and 'leave-one-speaker-out' in m.card['summary']
    assert not {'mimictalk_german_20s', 'videoretalking_face4'} & set(m.card['speakers'])


def test_instag_evaluate_json_has_every_metric(tmp_path):
    from instag.audio import write_wav
    from instag.example_data import write_example_dataset
    from instag.train import train, train_config
    ds = write_example_dataset(tmp_path / 'ds', frames=20, size=48, val_frames=6)
    cfg = train_config('cpu', seconds=0.4, face_iterations=2, mouth_iterations=1, fuse_iterations=1, static_iterations=0,
                       synthesizer__face__init_points=60, synthesizer__mouth__init_points=30, eval_frames=2,
                       eval_lmd=False, threads=1, data__audio='mel')
    run = train(ds, cfg, run_dir=tmp_path / 'run', verbose=False).run_dir
    wav = tmp_path / 'speech.wav'
    write_wav(wav, 0.1 * np.sin(np.arange(32000) / 16000 * 2 * np.pi * 200), sample_rate=16000)
    r = subprocess.run([sys.executable, '-m', 'instag', 'evaluate', str(run), '--json', '--audio', str(wav)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for k in ('psnr', 'psnr_face', 'psnr_inner', 'ssim_face', 'lmd', 'aue_u', 'aue_l', 'lip_corr', 'sync_offset', 'sync_conf',
              'lpips', 'error_share'):
        assert k in out, k
    assert np.isfinite(out['psnr_inner']) and abs(sum(out['error_share'].values()) - 1) < 1e-3, out['error_share']
    assert out['lpips'] is None and 'never downloads' in out['lpips_note']
    assert np.isfinite(out['psnr']) and 'speech.wav' in out['speech']
    assert json.loads((run / 'evaluation.json').read_text())['psnr'] == out['psnr']
    weights = _random_lpips_weights(tmp_path / 'lpips')  # in the formats of the real files, which are the user's
    r = subprocess.run([sys.executable, '-m', 'instag', 'evaluate', str(run), '--json', '--lpips', str(weights), '--no-write'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['lpips'] > 0 and 'local weights' in out['lpips_note']


def _random_lpips_weights(d):
    import torch
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    shapes = ((64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3))
    back = {}
    for idx, (o, i, k) in zip((0, 3, 6, 8, 10), shapes):
        back[f'features.{idx}.weight'] = torch.randn(o, i, k, k, generator=g) * 0.05; back[f'features.{idx}.bias'] = torch.zeros(o)
    torch.save(back, d / 'alexnet.pth')
    torch.save({f'lin{k}.model.1.weight': torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate((64, 192, 384, 256, 256))}, d / 'alex.pth')
    return d

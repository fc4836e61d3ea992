"""The one frame path: composite and mouth dilation, the same pixels from the viewer, `instag render` and `evaluate`,
a tiny run that beats the mean-frame baseline, and the run listing."""
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from instag.camera import Camera
from instag.example_data import write_example_dataset
from instag.talking_head import (LAYER_ORDER, MOUTH_DILATION, composite, dilate_mouth, render_frame, to_uint8)
from instag.train import train, train_config

TINY = dict(seconds=0.4, face_iterations=6, mouth_iterations=4, fuse_iterations=2, static_iterations=2,
            synthesizer__face__init_points=150, synthesizer__mouth__init_points=80, eval_frames=3, eval_lmd=False,
            threads=1, data__audio='mel')


def _layer(H, W, box, colour):
    alpha = torch.zeros(H, W, 1); alpha[box] = 1.0
    return alpha * torch.tensor(colour), alpha


def test_composite_layers_back_to_front():
    H = W = 16
    bg = torch.full((H, W, 3), 0.25)
    face = _layer(H, W, (slice(0, 8), slice(None)), (1., 0., 0.))
    mouth = _layer(H, W, (slice(4, 12), slice(4, 12)), (0., 0., 1.))
    torso = _layer(H, W, (slice(10, 16), slice(None)), (0., 1., 0.))
    out = composite({'face': face, 'torso': torso, 'mouth': mouth}, bg)   # given in any order
    assert list(out.layers) == [n for n in LAYER_ORDER]
    assert out.rgb[6, 6].tolist() == [1., 0., 0.]        # face over mouth
    assert out.rgb[10, 6].tolist() == [0., 0., 1.]       # mouth over torso
    assert out.rgb[14, 0].tolist() == [0., 1., 0.]       # torso over the plate
    assert out.rgb[9, 0].tolist() == [0.25] * 3          # the plate where nothing is
    half = (face[0] * 0.5, face[1] * 0.5)                # a half-transparent face lets half of the mouth through
    assert torch.allclose(composite({'face': half, 'mouth': mouth}, bg).rgb[6, 6], torch.tensor([0.5, 0., 0.5]))
    assert torch.equal(out.face_alpha, face[1]) and torch.equal(out.mouth_rgb, mouth[0])


def test_mouth_dilation_grows_by_half_the_window_and_keeps_the_colour():
    H = W = 40
    rgb, alpha = _layer(H, W, (slice(18, 22), slice(18, 22)), (0.2, 0.4, 0.6))
    grown_rgb, grown = dilate_mouth(rgb, alpha)
    r = MOUTH_DILATION // 2
    assert torch.equal(grown[..., 0] > 0.5, torch.nn.functional.max_pool2d(alpha[None, None, ..., 0], MOUTH_DILATION, 1, r)[0, 0] > 0.5)
    assert bool(grown[18 - r, 20, 0] == 1) and bool(grown[18 - r - 1, 20, 0] == 0)
    torch.testing.assert_close(grown_rgb[18 - r, 20], torch.tensor([0.2, 0.4, 0.6]))   # the nearby mouth's colour
    assert torch.equal(grown_rgb[20, 20], rgb[20, 20])                                    # the inside is unchanged
    empty = torch.zeros(H, W, 1)
    assert dilate_mouth(torch.zeros(H, W, 3), empty)[1] is empty                         # nothing to grow
    bg = torch.ones(H, W, 3)
    face = _layer(H, W, (slice(0, 19), slice(None)), (1., 0., 0.))
    plain, dilated = composite({'face': face, 'mouth': (rgb, alpha)}, bg), composite({'face': face, 'mouth': (rgb, alpha)}, bg, True)
    assert torch.equal(plain.rgb[:19], dilated.rgb[:19])          # the face still covers what grew under it
    assert (dilated.rgb[22 + r - 1, 20] != plain.rgb[22 + r - 1, 20]).all()


def test_render_frame_is_render_then_composite():
    from instag.render import head_gaussians, render
    g = torch.Generator().manual_seed(0)
    cam = Camera.orbit(distance=1.0, fov_deg=30, size=32)
    heads = {'face': head_gaussians(200, seed=1), 'mouth': head_gaussians(100, seed=2)}
    bg = torch.rand(32, 32, 3, generator=g)
    out = render_frame(heads, cam, bg, backend='torch', dilate=True)
    layers = {n: (o.rgb, o.alpha) for n, o in ((n, render(h, cam.viewmat, cam.K, 32, 32, backend='torch')) for n, h in heads.items())}
    torch.testing.assert_close(out.rgb, composite(layers, bg, dilate=True).rgb)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "A small synthetic speaker (6 s at 64 px), 300 + 75 + 10 iterations on its first 3 s: about 20 s on 2 cores."
    from instag.synth.corpus import synthesize
    root = tmp_path_factory.mktemp('frame_path')
    ds = synthesize(1, 6.0, 64, seed=7, out=root / 'synth', progress=False)[0]
    cfg = train_config('cpu', seconds=3, face_iterations=300, mouth_iterations=75, fuse_iterations=10, static_iterations=20,
                       synthesizer__face__init_points=800, synthesizer__mouth__init_points=300, eval_frames=0,
                       eval_lmd=False, threads=2, densify__refine_start=50, densify__refine_stop=50)
    return train(ds, cfg, run_dir=root / 'outputs' / 'train' / 'run', verbose=False)


def test_tiny_run_beats_the_mean_frame_baseline(tiny_run):
    m = tiny_run.metrics
    assert m['test_frames'] >= 50                         # the 3 s the run never saw
    # measured at this commit: 32.2 dB against 26.0; the margin asked for leaves room for run-to-run noise
    assert m['psnr'] > m['baseline_psnr'] + 3.0, m         # held-out frames: better than predicting the mean frame
    assert m['psnr_face'] > m['baseline_psnr_face'], m


def test_viewer_render_and_evaluate_draw_the_same_pixels(tiny_run):
    "One frame through the viewer's render_fn, `instag render`'s frame loop and `evaluate`: identical uint8 pixels."
    from instag.evaluate import render_test_frame
    from instag.inference import load_run
    from instag.view.scenes import trained_scene
    from instag.view.viewer import ViewState, make_render_fn
    head = load_run(tiny_run.run_dir)
    k, i = 0, head.frame(0).index
    assert i == head.frames[0]
    via_render = head.frame_rgb(k, head.ds.audio_features)            # the loop of render_audio, the dataset's audio
    via_evaluate = to_uint8(render_test_frame(head.model, head.ds.frame(i)).rgb)
    scene = trained_scene(tiny_run.run_dir)
    via_viewer = make_render_fn(scene)(head.frame(k).camera, ViewState(frame=k, track='training audio'))
    assert via_render.shape == (64, 64, 3) and via_render.std() > 1          # a picture, not a blank
    np.testing.assert_array_equal(via_viewer, via_render)
    np.testing.assert_array_equal(via_evaluate, via_render)


def test_runs_listing_prints_one_json_line_per_run(tiny_run):
    root = tiny_run.run_dir.parent.parent
    out = subprocess.run([sys.executable, '-m', 'instag.runs', '--list', str(root)], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 1
    r = rows[0]
    assert {'path', 'job', 'dataset', 'created', 'metrics'} <= set(r)
    assert r['job'] == 'train' and r['finished'] and Path(r['path']) == tiny_run.run_dir
    assert r['metrics']['psnr'] == pytest.approx(tiny_run.metrics['psnr'])
    cli = subprocess.run([sys.executable, '-m', 'instag', 'runs', str(root)], capture_output=True, text=True, check=True)
    assert cli.stdout == out.stdout
    bad = subprocess.run([sys.executable, '-m', 'instag', 'runs', str(root / 'nope')], capture_output=True, text=True)
    assert bad.returncode == 2 and 'Traceback' not in bad.stderr and 'not a folder' in bad.stderr


def test_device_from_config_refuses_cuda_without_it(tmp_path):
    from instag.core import UserError
    if torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    ds = write_example_dataset(tmp_path / 'ds', frames=20, size=32, val_frames=6)
    with pytest.raises(UserError, match='CUDA is not available'):
        train(ds, train_config('cpu', **{**TINY, 'device': 'cuda'}), run_dir=tmp_path / 'r', verbose=False, evaluate=False)


def test_evaluation_reaches_the_face_mesh(capsys):
    """LMD needs `instag.prepare.face` (mediapipe, required below Python 3.13); a failed import must not silently turn
    every LMD into None: with mediapipe the mesh runs, without it (Python 3.13+) a notice says LMD was skipped."""
    from helpers import has_mediapipe
    from instag.evaluate import face_mesh_metrics
    blank = [np.zeros((64, 64, 3), np.uint8)] * 3
    out = face_mesh_metrics(blank, blank)
    err = capsys.readouterr().err
    assert out['lmd'] is None and out['lmd_frames'] == 0
    if has_mediapipe():
        assert 'cannot be imported' not in err and 'LMD skipped' not in err, err
        assert out['open_render'] is not None   # it ran: no face found
    else: assert 'LMD skipped' in err and 'pip install mediapipe' in err, err   # says why, and the fix

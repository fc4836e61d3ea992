"""The live viewer (`instag.view.viewer`): server lifecycle over HTTP, frame changes through the API, render_fn, run files,
the CLI, and (slow, needs Debian's chromium) a headless-browser screenshot that shows the head."""
import json, shutil, socket, threading, urllib.error, urllib.request

import numpy as np
import pytest
import torch

from instag.camera import Camera
from instag.view.screenshot import chromium_screenshot
from instag.runs import loss_figure, read_history, read_metrics
from instag.view.viewer import Viewer, ViewState, make_render_fn, camera_from_viser, viser_pose
from instag.view.scenes import toy_scene, scene_from_path, main_view

FIRST_DRAW_S = 600  # the first render may compile the C++ renderer (minutes on 2 busy cores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _viewer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith('instag-viewer') and t.is_alive()]


@pytest.fixture(scope='module')
def small_scene():
    return toy_scene(n_gaussians=3000, frames=20)


def test_viewer_serves_changes_frame_and_stops(small_scene, tmp_path):
    run = tmp_path / 'run'; run.mkdir()
    (run / 'metrics.jsonl').write_text('\n'.join(json.dumps(dict(step=s, loss=1 / (s + 1), psnr=20 + s / 100)) for s in range(0, 500, 50)))
    small_scene.run_dir = run   # the plotly panel
    from instag.audio import write_wav
    t = np.arange(16000 * 2) / 16000   # 2 s: 50 frames, loud in the second half
    write_wav(tmp_path / 'speech.wav', 0.5 * np.sin(2 * np.pi * 220 * t) * (t > 1))
    name, track = small_scene.add_track(tmp_path / 'speech.wav'); small_scene.tracks[name] = track
    port = _free_port()
    viewer = Viewer(small_scene, port=port)
    try:
        test_port = viewer.port
        assert test_port == port and viewer.url == f'http://127.0.0.1:{port}'
        page = urllib.request.urlopen(viewer.url, timeout=10)
        assert page.status == 200 and b'<html' in page.read().lower()
        assert viewer.wait_idle(FIRST_DRAW_S)
        viewer.set_frame(5)
        assert viewer.wait_idle(60)
        assert viewer.state.frame == 5 and viewer.frame.value == 5
        assert viewer.panel_image.shape == (256, 256, 3) and viewer.draws >= 1
        viewer.color.value = 'branch'; viewer.components.value = small_scene.components[-1]
        viewer.branch_boxes['mouth'].value = False
        assert viewer.wait_idle(60) and viewer.state.branches == ('face',) and viewer.state.color == 'branch'
        viewer.show.value = 'both'; viewer.color.value = 'deformation'; viewer.set_frame(6)   # splats recoloured
        assert viewer.wait_idle(60) and viewer.splats['face'].visible and not viewer.splats['mouth'].visible
        viewer.show.value = 'splats (canonical)'; assert viewer.wait_idle(60)
        viewer.track.value = 'speech'
        assert viewer.wait_idle(60) and viewer.frame.max == 49 and viewer.state.track == 'speech'
        viewer.play(); assert viewer._playing.is_set(); viewer.pause()
    finally:
        viewer.stop()
    assert _viewer_threads() == []
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f'http://127.0.0.1:{test_port}', timeout=2)
    viewer.stop()  # a second stop is harmless


def test_render_fn_branches_colours_and_motion(small_scene):
    render_fn = make_render_fn(small_scene)
    cam = small_scene.cameras[len(small_scene.cameras) // 2]
    full = render_fn(cam, ViewState(frame=3))
    assert full.dtype == np.uint8 and full.shape == (cam.height, cam.width, 3)
    face = render_fn(cam, ViewState(frame=3, branches=('face',)))
    mouth = render_fn(cam, ViewState(frame=3, branches=('mouth',)))
    assert (face != mouth).any() and (mouth != 255).any(axis=-1).mean() < (face != 255).any(axis=-1).mean()
    assert (render_fn(cam, ViewState(frame=3, color='branch')) != full).any()
    frames = [render_fn(cam, ViewState(frame=f)) for f in range(small_scene.tracks['rhythm'].frames)]
    assert max(np.abs(f.astype(int) - frames[0]).mean() for f in frames) > 0.5  # the head moves
    with pytest.raises(ValueError): render_fn(cam, ViewState(color='rainbow'))


def test_viser_camera_round_trip():
    cam = Camera.orbit(0.6, yaw_deg=20, pitch_deg=-5, size=256)
    wxyz, position, fov, aspect = viser_pose(cam)
    back = camera_from_viser(wxyz, position, fov, aspect, size=256)
    torch.testing.assert_close(back.viewmat, cam.viewmat, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.K, cam.K, atol=1e-3, rtol=0)
    wide = camera_from_viser(wxyz, position, fov, 16 / 9, size=256)
    assert (wide.width, wide.height) == (256, 144)


def test_run_files(tmp_path):
    from instag.runs import write_history
    records = [dict(stage='face', step=1, iteration=1, loss=1.0, psnr=20.0, **{'loss/photometric': 0.9, 'loss/alpha': 0.1}),
               dict(stage='mouth', step=1, iteration=2, loss=0.5, psnr=21.0, **{'loss/photometric': 0.5})]
    write_history(tmp_path, records)
    assert read_history(tmp_path) == records
    (tmp_path / 'metrics.json').write_text(json.dumps({'psnr': 28.1, 'name': 'x', 'lpips': 0.04}))
    assert read_metrics(tmp_path)['psnr'] == 28.1
    assert len(loss_figure(read_history(tmp_path)).data) == 5   # face: 2 terms + PSNR, mouth: 1 term + PSNR
    assert read_history(tmp_path / 'missing') == []
    (tmp_path / 'losses.json').write_text('[{"stage": "face"')     # being written: no curves, no crash
    assert read_history(tmp_path) == []


def test_scene_from_path_refuses_what_it_cannot_show(tmp_path):
    from instag.core import UserError
    with pytest.raises(UserError, match='not a folder'): scene_from_path(tmp_path / 'nope')
    with pytest.raises(UserError, match='neither a run'): scene_from_path(tmp_path)
    with pytest.raises(UserError, match='does not exist'): scene_from_path('toy', audio=tmp_path / 'missing.wav')


def test_cli_view_prints_url_and_returns(capsys):
    assert main_view(['toy', '--port', '0', '--seconds', '0.5']) == 0
    out = capsys.readouterr().out
    assert 'http://localhost:' in out
    assert _viewer_threads() == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('chromium') is None, reason='needs Debian chromium (apt-get install -y chromium)')
def test_headless_chromium_screenshot_shows_the_head(small_scene, tmp_path):
    from PIL import Image
    small_scene.run_dir = None
    with Viewer(small_scene, port=0) as viewer:
        assert viewer.wait_idle(FIRST_DRAW_S)
        def drawn():  # the browser connected and its view was rendered and sent
            return bool(viewer.server.get_clients()) and viewer.draws >= 2 and viewer.wait_idle(0)
        chromium_screenshot(viewer.url, tmp_path / 'shot.png', ready=drawn, settle_s=6)
    shot = np.asarray(Image.open(tmp_path / 'shot.png').convert('RGB')).astype(int)
    skin = (np.abs(shot - [222, 168, 140]).max(-1) < 30).mean()
    hair = (np.abs(shot - [56, 36, 26]).max(-1) < 30).mean()
    assert skin > 0.01 and hair > 0.002, (skin, hair)


@pytest.fixture(scope='module')
def tiny_synth(tmp_path_factory):
    import instag.synth.corpus as synth
    return synth.synthesize(identities=1, seconds=1.0, size=64, seed=3, out=tmp_path_factory.mktemp('synth'),
                            progress=False, detail=0.2, video=False)[0]


@pytest.mark.slow
def test_synthetic_dataset_ground_truth_head(tiny_synth):
    "A tiny `instag synth` dataset opens with its own head, its branches and its ground-truth motion."
    root = tiny_synth
    scene = scene_from_path(root)
    assert set(scene.canonical) >= {'face', 'mouth'} and scene.tracks['ground truth'].frames == 25
    gt = np.load(root / 'instag' / 'motion_gt.npz')
    wide, shut = int(gt['jaw'].argmax()), int(gt['jaw'].argmin())
    moved = scene.deform('ground truth', wide, 'ground truth')['face']['means'] - scene.canonical['face']['means']
    assert moved.norm(dim=-1).max() > 1e-3
    render_fn = make_render_fn(scene)
    a, b = (render_fn(scene.cameras[0], ViewState(frame=f)) for f in (wide, shut))
    assert a.shape == (64, 64, 3) and (a != b).any()


@pytest.mark.slow
def test_trained_run_opens_with_its_curves(tiny_synth, tmp_path):
    "A (barely) trained run: its head moves by its motion fields, its loss curves and metrics reach the viewer."
    import instag.train as train
    cfg = train.train_config('cpu', face_iterations=20, mouth_iterations=10, fuse_iterations=5, static_iterations=5, seconds=0)
    train.train(tiny_synth, cfg, run_dir=tmp_path / 'run', verbose=False)
    scene = scene_from_path(tmp_path / 'run')
    assert scene.run_dir == tmp_path / 'run' and set(scene.canonical) == {'face', 'mouth'}
    assert read_history(scene.run_dir)[0]['loss'] > 0 and 'loss/photometric' in read_history(scene.run_dir)[0]
    with Viewer(scene, port=0) as viewer:
        assert viewer.wait_idle(FIRST_DRAW_S)
        viewer.set_frame(3); assert viewer.wait_idle(120) and viewer.panel_image.shape == (64, 64, 3)
    assert _viewer_threads() == []

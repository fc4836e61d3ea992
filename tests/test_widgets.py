"""The JupyterLab panels driven from Python, without a browser: the training panel's buttons, the deformation explorer's
widgets, the dataset browser; no thread is left behind."""
import threading, time

import torch
from pathlib import Path

import anywidget  # noqa: F401  hard requirements (settings.ini): a missing one fails here, it is never skipped
import ipywidgets  # noqa: F401
import pytest

from instag.example_data import write_example_dataset
from instag.train import resume, train, train_config

TINY = dict(seconds=0.4, mouth_iterations=2, fuse_iterations=1, static_iterations=0,
            synthesizer__face__init_points=60, synthesizer__mouth__init_points=30, eval_frames=2, eval_lmd=False,
            threads=1, data__audio='mel', checkpoint_every_s=1e9, checkpoint_every_steps=10 ** 6)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp('ds') / 'ds', frames=20, size=48, val_frames=6)


def _until(cond, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond(): return True
        time.sleep(0.01)
    return False


def _instag_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith('instag-') and t.is_alive()]


def test_training_panel_pause_step_resume_stop(dataset, tmp_path):
    from instag.widgets import TrainingPanel
    t = train(dataset, train_config('cpu', face_iterations=400, **TINY), run_dir=tmp_path / 'run', verbose=False, fit=False)
    panel = TrainingPanel(t, refresh_s=0.05).start()
    try:
        assert _until(lambda: t.iteration >= 3)
        panel.buttons['Pause'].click()
        assert panel.controls.wait_paused(60)
        n = t.iteration
        time.sleep(0.3)
        assert t.iteration == n, 'Pause must stop the iteration counter'
        panel.buttons['Step'].click()
        assert _until(lambda: t.iteration == n + 1 and panel.controls.waiting)
        time.sleep(0.3)
        assert t.iteration == n + 1, 'Step advances by exactly one'
        panel.buttons['Resume'].click()
        assert _until(lambda: t.iteration >= n + 5)
        assert panel.updates > 0 and panel.image.value[:4] == b'\x89PNG' and len(panel.figure.data) >= 2
        panel.buttons['Stop'].click()
        assert _until(lambda: not panel.running)
    finally:
        panel.stop()
    assert panel.error is None, panel.error
    assert (tmp_path / 'run' / 'checkpoint.pt').exists() and not (tmp_path / 'run' / 'model.pt').exists()
    stopped_at = t.iteration
    r = resume(tmp_path / 'run', verbose=False, evaluate=False)  # Stop left a checkpoint that --resume continues
    assert (tmp_path / 'run' / 'model.pt').exists() and r.iteration == 403 and stopped_at < 400
    assert not _instag_threads()


def test_training_panel_viewer_button_opens_and_stops_with_it(dataset, tmp_path):
    import viser  # noqa: F401  a hard requirement (settings.ini): missing fails the test
    from instag.widgets import TrainingPanel
    t = train(dataset, train_config('cpu', face_iterations=400, **TINY), run_dir=tmp_path / 'run', verbose=False, fit=False)
    panel = TrainingPanel(t, refresh_s=0.5, viewer_port=0).start()
    try:
        assert _until(lambda: t.iteration >= 2)
        panel.buttons['Viewer'].click()
        assert panel.viewer is not None and panel.buttons['Viewer'].description == 'Stop viewer'
    finally:
        panel.stop()
    assert panel.viewer is None and not _instag_threads()


@pytest.fixture(scope='module')
def finished_run(dataset, tmp_path_factory):
    return train(dataset, train_config('cpu', face_iterations=6, **TINY), run_dir=tmp_path_factory.mktemp('r') / 'run',
                 verbose=False, evaluate=False).run_dir


def test_explorer_frame_slider_and_universal_toggle_change_the_image(finished_run):
    from instag.widgets import DeformationExplorer
    e = DeformationExplorer(finished_run)
    a = e.image.value
    e.frame.value = 3
    b = e.image.value
    assert b != a, 'moving the frame slider changes the image'
    e.parts['universal'].value = False
    c = e.image.value
    assert c != b, 'switching the universal field off changes it again'
    e.colour.value = '|d_mu|'
    assert e.image.value != c and 'none (canonical)' in e.caption.value
    assert not _instag_threads()


def test_dataset_browser_follows_the_slider(dataset):
    from instag.widgets import DatasetBrowser
    b = DatasetBrowser(dataset)
    first = b.image.value
    b.slider.value = 5
    assert b.image.value != first and b.curves.layout.shapes[0].x0 == b.ds.ids[5]


@pytest.mark.slow
def test_jupyterlab_screenshot_shows_the_explorer(finished_run, tmp_path):
    "JupyterLab served on 127.0.0.1 with a token, the notebook run in headless Chromium, the explorer's image drawn."
    import shutil
    import nbformat
    if not (shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')):
        pytest.skip('Chromium is not installed (apt-get install -y chromium)')
    from PIL import Image
    from instag.view.screenshot import lab_screenshot
    nb = nbformat.v4.new_notebook()
    nb.metadata['kernelspec'] = dict(name='python3', display_name='Python 3 (ipykernel)', language='python')
    nb.cells = [nbformat.v4.new_code_cell(f'from instag.widgets import DeformationExplorer\nDeformationExplorer({str(finished_run)!r})')]
    nbformat.write(nb, tmp_path / 'explorer.ipynb')
    shot = lab_screenshot(tmp_path / 'explorer.ipynb', tmp_path / 'shot.png', wait_s=240)  # raises unless the image drew
    img = Image.open(shot)
    assert img.size == (1300, 950)


def test_explorer_opens_one_person_of_a_pretraining_run_with_its_parts_and_hook(tmp_path):
    from instag.pretrain import pretrain, pretrain_config
    from instag.widgets import DeformationExplorer
    for k in range(2): write_example_dataset(tmp_path / 'corpus' / f'id{k}', frames=20, size=40, val_frames=6)
    cfg = pretrain_config('cpu', face_iterations=4, mouth_iterations=3, face_static_iterations=0, mouth_static_iterations=0,
                          synthesizer__face__init_points=80, synthesizer__mouth__init_points=40, negatives=0,
                          data__audio='mel', threads=1, checkpoint_every_s=1e9)
    run = pretrain(tmp_path / 'corpus', cfg, run_dir=tmp_path / 'pre', verbose=False).run_dir
    e = DeformationExplorer(run, identity=1)
    assert set(e.parts) == {'universal', 'personal', 'hook'} and 'id1' in str(e.head.ds.root)
    e.frame.value = 2
    a = e.image.value
    e.parts['personal'].value = False
    b = e.image.value
    assert b != a
    mouth_on = e.deformed()[1].gaussians['mouth']['means']
    e.parts['hook'].value = False
    k, d = e.deformed()
    assert d.hook is None and 'hook off' in e.caption.value
    assert not torch.equal(d.gaussians['mouth']['means'], mouth_on), 'without phi the mouth moves differently'
    assert e.head.model.cfg.hook, 'the toggle must not change the model for good'

"""The workbench foundation: CLI dispatch, doctor, config strictness, camera conversion."""
import json, subprocess, sys
from dataclasses import dataclass, field

import pytest
import torch

from instag.cli import main
from instag.config import Config
from instag.core import UserError, new_run_dir
from instag.runs import CONFIG
from instag.camera import Camera, opengl_c2w_to_opencv_w2c, opencv_w2c_to_opengl_c2w


def test_doctor_exits_zero_and_prints_table(capsys):
    assert main(['doctor']) == 0
    out = capsys.readouterr().out
    for part in ('torch', 'CUDA', 'gsplat', 'tinycudann', 'mediapipe face mesh', 'CPU rasterizer'):
        assert part in out


def test_doctor_json(capsys):
    assert main(['doctor', '--json']) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d['torch']['ok'] and 'CUDA' in d


def test_console_script_user_error_has_no_traceback():
    r = subprocess.run([sys.executable, '-m', 'instag', 'nonsense'], capture_output=True, text=True)
    assert r.returncode == 2 and 'unknown command' in r.stderr and 'Traceback' not in r.stderr


def test_user_error_becomes_one_line(monkeypatch, capsys):
    import instag.cli as cli
    def boom(argv): raise UserError('no face found in frames 0-24 of talk.mp4: the video needs one frontal face')
    monkeypatch.setattr(cli, '_resolve', lambda name: boom)
    assert cli.main(['prepare', 'x.mp4']) == 2
    err = capsys.readouterr().err
    assert 'no face found' in err and 'Traceback' not in err


@dataclass
class Inner(Config):
    # a float knob
    rate: float = 0.5

@dataclass
class Outer(Config):
    # an int knob
    iters: int = 10
    # a section
    inner: Inner = field(default_factory=Inner)


def test_config_refuses_unknown_and_accepts_every_field(tmp_path):
    with pytest.raises(UserError, match='inner__rate'): Outer.from_params({'inner__rat': 1.0})
    cfg = Outer.from_params({'iters': 3, 'inner__rate': 1})
    assert cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    run = new_run_dir('test', 'cfg', root=tmp_path)
    cfg.to_yaml(run / CONFIG)
    assert Outer.from_yaml(run / 'config.yaml') == cfg


def test_camera_conversion_round_trip():
    torch.manual_seed(0)
    q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    if torch.det(q) < 0: q[:, 0] *= -1
    c2w = torch.eye(4, dtype=torch.float64); c2w[:3, :3] = q; c2w[:3, 3] = torch.randn(3, dtype=torch.float64)
    w2c = opengl_c2w_to_opencv_w2c(c2w)
    torch.testing.assert_close(opencv_w2c_to_opengl_c2w(w2c), c2w)
    # the OpenGL camera's -z axis (its viewing direction) is the OpenCV camera's +z
    forward_world = -c2w[:3, 2]
    torch.testing.assert_close(w2c[:3, :3] @ forward_world, torch.tensor([0, 0, 1.0], dtype=torch.float64))


def test_runs_go_to_outputs_of_the_working_directory(tmp_path):
    import os
    env = {k: v for k, v in os.environ.items() if k != 'INSTAG_OUTPUTS'}
    r = subprocess.run([sys.executable, '-c', 'from instag.core import OUTPUTS_DIR; print(OUTPUTS_DIR)'], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.stdout.strip() == str(tmp_path / 'outputs'), r.stderr
    env['INSTAG_OUTPUTS'] = str(tmp_path / 'elsewhere')
    r = subprocess.run([sys.executable, '-c', 'from instag.core import OUTPUTS_DIR; print(OUTPUTS_DIR)'], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.stdout.strip() == str(tmp_path / 'elsewhere'), r.stderr

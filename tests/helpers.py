"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""
import importlib.util, sys

from instag.trainer import Callback

# settings.ini requires mediapipe==0.10.21 below Python 3.13 (it has no wheels above): there it is never optional
MEDIAPIPE_REQUIRED = sys.version_info < (3, 13)


class Killed(Exception):
    "What `KillAt` raises: a kill between checkpoints."


class KillAt(Callback):
    "Raise after global iteration `n` (counting all stages), as a kill between checkpoints would stop the run."
    order = 100
    def __init__(self, n): self.n, self.done = n, 0
    def after_step(self, t):
        self.done += 1
        if self.done == self.n: raise Killed()


def flat_config(run_dir) -> dict:
    "A run's config.yaml flattened into papermill spelling (`synthesizer__face__init_points`)."
    from pathlib import Path
    import yaml
    def walk(d, prefix=''):
        for k, v in d.items():
            if isinstance(v, dict): yield from walk(v, f'{prefix}{k}__')
            else: yield f'{prefix}{k}', v
    return dict(walk(yaml.safe_load((Path(run_dir) / 'config.yaml').read_text())))


def assert_injected(run_dir, params: dict) -> None:
    "Each injected papermill parameter reached the run: config.yaml holds it with the injected value."
    saved = flat_config(run_dir)
    wrong = {k: (v, saved.get(k, '<absent>')) for k, v in params.items() if k not in saved or saved[k] != v}
    assert not wrong, f'injected parameters not in config.yaml as injected (injected, saved): {wrong}'


def has_mediapipe() -> bool:
    "Whether mediapipe is there; below Python 3.13 it must be (a plain import: missing fails the calling test)."
    if not MEDIAPIPE_REQUIRED: return importlib.util.find_spec('mediapipe') is not None
    import mediapipe  # noqa: F401
    return True


# the smallest training run the command-line tests start from: 20 frames of 48 px, a few iterations, log-mel audio
TINY = dict(seconds=0.4, face_iterations=2, mouth_iterations=1, fuse_iterations=1, static_iterations=0,
            synthesizer__face__init_points=60, synthesizer__mouth__init_points=30, eval_frames=2, eval_lmd=False,
            threads=1, data__audio='mel')


def tiny_world(root, tone_seconds: dict):
    """A tiny dataset `root/ds`, a finished run `root/run` trained on it with `TINY`, and a 200-Hz tone `root/NAME.wav`
    for each NAME: seconds of `tone_seconds`. Returns (ds, run)."""
    import numpy as np
    from instag.audio import write_wav
    from instag.example_data import write_example_dataset
    from instag.train import train, train_config
    ds = write_example_dataset(root / 'ds', frames=20, size=48, val_frames=5)
    run = train(ds, train_config('cpu', **TINY), run_dir=root / 'run', verbose=False).run_dir
    for name, seconds in tone_seconds.items():
        write_wav(root / f'{name}.wav', 0.1 * np.sin(np.arange(int(16000 * seconds)) / 16000 * 2 * np.pi * 200), sample_rate=16000)
    return ds, run


def chromium(needed_for: str) -> str:
    """Debian's Chromium for a browser test: skips without it, unless INSTAG_REQUIRE_CHROMIUM=1 (CI), where it fails."""
    import os, shutil
    import pytest
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None:
        if os.environ.get('INSTAG_REQUIRE_CHROMIUM') == '1':
            pytest.fail('INSTAG_REQUIRE_CHROMIUM=1 but chromium is not installed: apt-get install -y chromium')
        pytest.skip(f'chromium is not installed (apt-get install -y chromium); {needed_for} needs it')
    return exe

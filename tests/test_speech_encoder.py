"""The default speech encoder (Whisper base from pip): pinned weights, features without seams, the features a dataset,
a prior and a render agree on, and the refusals when they do not."""
import json
import os

import numpy as np
import pytest

from instag.core import UserError
from instag.layout import FPS, SAMPLE_RATE
from instag.prepare import speech_encoder as se


def _installed():
    "The encoder is part of the standard install; CI sets INSTAG_REQUIRE_ENCODER=1 so a missing one fails there."
    why = se.encoder_status(se.DEFAULT_ENCODER)
    if why and os.environ.get('INSTAG_REQUIRE_ENCODER'): pytest.fail(why)
    if why: pytest.skip(why)


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    "Voiced bursts at syllable rate over noise: enough structure for the encoder to react frame by frame."
    rng = np.random.default_rng(seed)
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = (np.sin(2 * np.pi * 3.3 * t + rng.uniform(0, 6)) > 0.2)
    wav = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE) * voiced + 0.01 * rng.standard_normal(len(t))
    return wav.astype(np.float32)


def test_features_do_not_depend_on_where_a_chunk_starts():
    "The same speech placed 0.4 s later, or cut out of a longer clip, gives the same features frame for frame."
    _installed()
    model, info = se.load_whisper(se.DEFAULT_ENCODER)
    wav = _speech(7.0)
    f = se.whisper_features(wav, model, 175)
    assert f.shape == (175, 2, info['dim']) and np.isfinite(f).all()
    later = se.whisper_features(np.concatenate([np.zeros(SAMPLE_RATE * 10 // FPS, np.float32), wav]), model, 185)
    np.testing.assert_allclose(later[10 + 30:185], f[30:175], atol=1e-4)
    piece = se.whisper_features(wav[SAMPLE_RATE * 3:SAMPLE_RATE * 6], model, 75)  # frames 75..149 of the clip
    np.testing.assert_allclose(piece[28:48], f[75 + 28:75 + 48], atol=1e-4)  # windows inside the piece
    # and the features do move with the speech: not a constant the test would pass with
    assert np.abs(np.diff(f[30:150, 0], axis=0)).mean() > 0.05


def test_30s_chunks_would_have_a_seam():
    "Why the windows are per frame: one 30-s window gives the same sound other states at another place in the window."
    _installed()
    model, _ = se.load_whisper(se.DEFAULT_ENCODER)
    wav = _speech(12.0, seed=1)
    import ctranslate2
    def chunk(piece):  # the old scheme: one 30-s window, audio at its start
        mel = se.whisper_log_mel(np.pad(piece, (0, se.WHISPER_CHUNK_S * SAMPLE_RATE - len(piece))))[None, :, :se.WHISPER_CHUNK_S * 100]
        return np.asarray(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True))[0]
    a, b = chunk(wav), chunk(wav[SAMPLE_RATE * 4:])  # seconds 4..12 at window positions 4..12 vs 0..8
    x, y = a[200 + 100:600], b[100:400]
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.mean() < 0.95, cos.mean()


def test_changed_weights_are_refused(tmp_path, monkeypatch):
    "A weight file that does not hash to the pinned value is refused with the reinstall command, before ctranslate2 reads it."
    _installed()
    spec = se.ENCODERS[se.DEFAULT_ENCODER]
    real = se._package_dir
    for pkg, rel in spec.parts:
        d = tmp_path / pkg; (d / rel).parent.mkdir(parents=True, exist_ok=True)
        data = (real(pkg) / rel).read_bytes()
        (d / rel).write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if pkg == spec.parts[-1][0] else data)
    monkeypatch.setattr(se, '_package_dir', lambda pkg: tmp_path / pkg)
    with pytest.raises(UserError, match='not the pinned.*pip install --force-reinstall'):
        se._registry_files(spec)


def test_missing_encoder_is_one_notice(monkeypatch, capsys):
    "Without the encoder, `auto` means log-mel only, and the notice names what to install."
    monkeypatch.setattr(se, '_package_dir', lambda pkg: None)
    assert se.resolve_encoder('auto') is None
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'instag[encoder]' in err and 'log-mel' in err
    with pytest.raises(UserError, match=r'not installed.*instag\[encoder\]'): se.resolve_encoder('whisper-base')


def test_features_like_a_dataset(tmp_path):
    "Render-time features are made exactly as the dataset's were; another encoder's entry is refused by name."
    _installed()
    wav = _speech(3.0)
    feats, info = se.encoder_features(wav, se.DEFAULT_ENCODER, 75)
    assert info['kind'] == 'whisper' and info['sha256'] == se.ENCODERS[se.DEFAULT_ENCODER].sha256
    np.testing.assert_allclose(se.features_like(info, wav, 75), feats, atol=1e-5)
    with pytest.raises(UserError, match='which is not here'):
        se.features_like(dict(info, sha256='0' * 64, name='whisper-large'), wav, 75)

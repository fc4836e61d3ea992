"""The dataset layer: loading the official layout, time splits, the frame cache, audio features and `instag check-data`."""
import json, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instag.audio import MEL_FILE, audio_feature_info, load_audio, log_mel_windows, write_wav
from instag.cli import main
from instag.core import UserError
from instag.check_data import check_data
from instag.data import DataConfig, Split, TalkingHeadDataset, parsing_to_labels
from instag.example_data import write_example_dataset
from instag.layout import LABELS, PARSING_COLORS, Metadata

OFFICIAL_FILES = {'au.csv', 'aud.wav', 'aud_ds.npy', 'bc.jpg', 'gt_imgs', 'ori_imgs', 'parsing', 'teeth_mask', 'torso_imgs',
                  'transforms_train.json', 'transforms_val.json'}


@pytest.fixture(scope='module')
def official(tmp_path_factory) -> Path:
    "10 frames of 64x64 in the official layout (7 train, 3 val), nothing but the official files."
    root = write_example_dataset(tmp_path_factory.mktemp('data') / 'official', frames=10, size=64, val_frames=3)
    assert {p.name for p in root.iterdir()} == OFFICIAL_FILES
    return root


@pytest.fixture
def copy(official, tmp_path):
    "A fresh copy of the official dataset to break."
    return Path(shutil.copytree(official, tmp_path / 'copy'))


def check_cli(root, capsys) -> tuple[int, list[str], dict]:
    "Run `instag check-data ROOT`; its exit code, problem lines and final JSON object."
    code = main(['check-data', str(root)])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, lines[:-1], json.loads(lines[-1])


def test_official_layout_loads_and_batches(official):
    ds = TalkingHeadDataset(official)
    assert ds.official and len(ds) == 10 and (ds.width, ds.height) == (64, 64)
    assert 'aud_ds.npy' in ds.audio_source and ds.audio_features.shape == (10, 16, 29)
    train, test = ds.split(0.2)
    assert train == [0, 1, 2, 3, 4] and test == [5, 6, 7, 8, 9]
    b = ds.batch(train)
    assert b.image.shape == (5, 64, 64, 3) and b.image.dtype == torch.float32 and 0 <= b.image.min() and b.image.max() <= 1
    assert b.labels.shape == (5, 64, 64) and b.viewmats.shape == (5, 4, 4) and b.Ks.shape == (5, 3, 3)
    assert b.audio.shape == (5, 8, 16, 29) and b.aus.shape == (5, 6) and b.depth is None
    f = ds.frame(4)
    # audio window [i-4, i+4) of the per-frame features, AUs from row i of au.csv
    torch.testing.assert_close(f.audio[4], ds.audio_features[4]); torch.testing.assert_close(f.audio[0], ds.audio_features[0])
    # the head at the world origin projects to the principal point, in front of the camera (OpenCV: +z forward)
    uvd = f.camera.project(torch.zeros(1, 3))[0]
    torch.testing.assert_close(uvd[:2], torch.tensor([32.0, 32.0]), atol=1e-3, rtol=0); assert uvd[2] > 0
    # every region of the cartoon is found, and the branch masks are the right ones
    assert set(f.labels.unique().tolist()) == set(LABELS.values())
    assert f.face_mask.sum() > f.mouth_mask.sum() > 0 and not (f.face_mask & f.mouth_mask).any()
    assert f.mouth_mask[f.labels == LABELS['teeth']].all()
    # the background is the torso layer over the plate: the plate where the head is
    plate = torch.tensor([90, 110, 130]) / 255
    assert (f.background[f.face_mask] - plate).abs().max() < 0.05


def test_split_errors_and_tail_holdout(official, copy):
    ds = TalkingHeadDataset(official)
    assert ds.split('all') == Split(list(range(7)), [7, 8, 9]) == ds.split(None, test='tail')
    assert ds.split(0.12, test='tail') == Split([0, 1, 2], [7, 8, 9])    # the same test frames whatever the seconds
    assert ds.split(0.12) == Split([0, 1, 2], [3, 4, 5, 6, 7, 8, 9])     # everything after the training window
    with pytest.raises(UserError, match='holds 0.3 s'): ds.split(5)
    with pytest.raises(UserError, match='positive'): ds.split(0)
    # a val file that repeats the train frames: the tail (at most half the clip) is held out instead
    val = json.loads((copy / 'transforms_train.json').read_text())
    (copy / 'transforms_val.json').write_text(json.dumps(val))
    train, test = TalkingHeadDataset(copy).split(None)
    assert train == [0, 1, 2, 3] and test == [4, 5, 6] and not set(train) & set(test)
    assert TalkingHeadDataset(copy).split(0.08) == Split([0, 1], [2, 3, 4, 5, 6])


def test_official_opencv_parsing_colours(tmp_path):
    "The official tools write parsing maps with OpenCV (BGR arrays): read back, the head is face, the torso torso."
    cv2 = pytest.importorskip('cv2')
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[0, 0], bgr[0, 1], bgr[0, 2] = (255, 0, 0), (0, 255, 0), (0, 0, 255)          # head, neck, torso as the official code spells them
    bgr[1, 0], bgr[1, 1], bgr[1, 2] = (100, 100, 100), (0, 0, 0), (255, 255, 255)    # mouth, hair, background
    cv2.imwrite(str(tmp_path / 'p.png'), bgr)
    labels = parsing_to_labels(np.array(Image.open(tmp_path / 'p.png').convert('RGB')))
    L = LABELS
    assert labels.tolist() == [[L['face'], L['neck'], L['torso']], [L['mouth'], L['hair'], L['background']]]
    assert PARSING_COLORS['head'] == (0, 0, 255)


def test_cache_is_bounded(official):
    ds = TalkingHeadDataset(official, DataConfig(cache_mb=0))
    for i in range(10): ds.frame(i)
    assert len(ds.cache.items) == 1
    ds = TalkingHeadDataset(official)
    ds.frame(2); ds.frame(2)
    assert ds.cache.hits == 1 and ds.cache.misses == 1


def test_instag_files_preferred(copy):
    "instag's own label maps, log-mel features and priors win over the official ones when present."
    (copy / 'instag' / 'masks').mkdir(parents=True); (copy / 'instag' / 'priors' / 'normal').mkdir(parents=True)
    for i in range(10): Image.fromarray(np.full((64, 64), LABELS['mouth'], np.uint8)).save(copy / 'instag' / 'masks' / f'{i}.png')
    np.save(copy / 'instag' / 'priors' / 'normal' / '3.npy', np.dstack([np.zeros((64, 64, 2)), np.ones((64, 64))]).astype(np.float16))
    np.save(copy / MEL_FILE, log_mel_windows(load_audio(copy / 'aud.wav'), frames=10))
    Metadata(fps=25, width=64, height=64, frames=10, audio_features={'mel': vars(audio_feature_info(10))}, complete=True).write(copy)
    ds = TalkingHeadDataset(copy)
    assert not ds.official and ds.audio_features.shape == (10, 16, 80)
    assert ds.frame(0).mouth_mask.all() and ds.frame(3).normal[..., 2].mean() == 1 and ds.frame(2).normal is None
    assert check_data(copy)[0] == []
    assert TalkingHeadDataset(copy, DataConfig(audio='deepspeech')).audio_features.shape == (10, 16, 29)


def test_wav_only_audio_computes_log_mel(copy):
    (copy / 'aud_ds.npy').unlink()
    ds = TalkingHeadDataset(copy)
    assert ds.audio_features.shape == (10, 16, 80) and 'computed' in ds.audio_source


def test_check_data_good(official, capsys):
    code, problems, stats = check_cli(official, capsys)
    assert code == 0 and problems == []
    assert stats['ok'] and stats['layout'] == 'official' and stats['frames'] == 10
    assert stats['face_found_ratio'] == 1.0 and stats['audio_seconds'] == pytest.approx(0.4)
    assert 0 < stats['pose_jitter_deg'] < 1


def test_check_data_console_script(official):
    r = subprocess.run([sys.executable, '-m', 'instag', 'check-data', str(official)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert {'frames', 'face_found_ratio', 'pose_jitter_deg', 'audio_seconds', 'ok'} <= set(last)


def test_check_data_missing_file(copy, capsys):
    (copy / 'au.csv').unlink(); shutil.rmtree(copy / 'torso_imgs')
    code, problems, stats = check_cli(copy, capsys)
    assert code == 1 and not stats['ok']
    assert 'missing: au.csv' in problems and 'missing: torso_imgs/' in problems


def test_check_data_frame_count_mismatch(copy, capsys):
    (copy / 'ori_imgs' / '6.jpg').unlink()
    shutil.copy(copy / 'ori_imgs' / '0.jpg', copy / 'ori_imgs' / '10.jpg')
    lines = (copy / 'au.csv').read_text().splitlines()
    (copy / 'au.csv').write_text('\n'.join(lines[:-1]) + '\n')
    np.save(copy / 'aud_ds.npy', np.zeros((8, 16, 29), np.float32))
    code, problems, stats = check_cli(copy, capsys)
    assert code == 1
    assert any(p.startswith('ori_imgs/: 1 of 10 frames missing (6.jpg)') for p in problems)
    assert any(p.startswith('ori_imgs/: 1 frames no transforms file lists (10.jpg)') for p in problems)
    assert any(p.startswith('au.csv has 9 rows for 10 frames') for p in problems)
    assert any(p.startswith('aud_ds.npy has 8 rows for 10 frames') for p in problems)


def test_check_data_nan_pose(copy, capsys):
    d = json.loads((copy / 'transforms_train.json').read_text())
    d['frames'][2]['transform_matrix'][0][3] = float('nan')
    (copy / 'transforms_train.json').write_text(json.dumps(d))  # json writes NaN, as numpy-based tools do
    code, problems, stats = check_cli(copy, capsys)
    assert code == 1 and any(p.startswith('1 poses hold NaN or inf (frames 2)') for p in problems)
    assert stats['pose_jitter_deg'] is not None
    with pytest.raises(UserError, match='NaN'): TalkingHeadDataset(copy)


def test_check_data_wrong_rate_audio(copy, capsys):
    t = np.arange(int(0.4 * 44100)) / 44100
    write_wav(copy / 'aud.wav', 0.3 * np.sin(2 * np.pi * 220 * t), sample_rate=44100)
    code, problems, stats = check_cli(copy, capsys)
    assert code == 1 and stats['audio_seconds'] == pytest.approx(0.4, abs=1e-3)
    assert problems == ['aud.wav is 44100 Hz with 1 channel(s); the layout wants 16000 Hz mono: '
                        'ffmpeg -i aud.wav -ac 1 -ar 16000 aud16k.wav && mv aud16k.wav aud.wav']
    assert load_audio(copy / 'aud.wav').shape == (6400,)  # the loader itself resamples


def test_check_data_incomplete_metadata_and_not_a_folder(copy, tmp_path, capsys):
    Metadata(fps=25, width=64, height=64, frames=12).write(copy)
    code, problems, stats = check_cli(copy, capsys)
    assert code == 1 and stats['layout'] == 'instag'
    assert any('complete: false' in p for p in problems) and any('says 12 frames but the transforms list 10' in p for p in problems)
    code, problems, stats = check_cli(tmp_path / 'nope', capsys)
    assert code == 1 and problems == [f'{tmp_path / "nope"} is not a folder'] and stats['frames'] == 0


def test_real_clip_audio_features(shared_data):
    "The German clip's AAC track (44.1 kHz stereo in an mp4) becomes 16 kHz mono and one log-mel window per frame."
    wav = load_audio(shared_data / 'mimictalk_german_20s.mp4')
    assert abs(len(wav) / 16000 - 20.0) < 0.1
    feats = log_mel_windows(wav, frames=500)
    assert feats.shape == (500, 16, 80) and np.isfinite(feats).all() and feats.std() > 1


def test_torch_dataloader(official):
    from torch.utils.data import DataLoader
    from instag.data import collate
    batches = list(DataLoader(TalkingHeadDataset(official), batch_size=4, shuffle=True, collate_fn=collate))
    assert [len(b.index) for b in batches] == [4, 4, 2] and sorted(torch.cat([b.index for b in batches]).tolist()) == list(range(10))


def test_check_data_feature_shape_and_empty_transforms(copy, capsys):
    (copy / 'instag').mkdir()
    np.save(copy / MEL_FILE, np.zeros((10, 16, 80), np.float32))
    Metadata(fps=25, width=64, height=64, frames=10, complete=True,
             audio_features={'mel': vars(audio_feature_info(12))}).write(copy)
    code, problems, _ = check_cli(copy, capsys)
    assert problems == ['instag/aud_mel.npy has shape [10, 16, 80] but metadata.json says [12, 16, 80]: rewrite one of them']
    for split in ('train', 'val'): (copy / f'transforms_{split}.json').write_text(json.dumps(dict(focal_len=96, cx=32, cy=32, frames=[])))
    code, problems, _ = check_cli(copy, capsys)
    assert code == 1 and any('list no frames' in p for p in problems)


def test_adnerf_transforms_without_principal_point(copy):
    "AD-NeRF's transforms carry only focal_len: the principal point is the image centre."
    for split in ('train', 'val'):
        p = copy / f'transforms_{split}.json'; d = json.loads(p.read_text()); del d['cx'], d['cy']; p.write_text(json.dumps(d))
    assert TalkingHeadDataset(copy).K[:2, 2].tolist() == [32.0, 32.0] and check_data(copy)[0] == []


def test_official_sapiens_priors_and_other_encoders(copy):
    "Priors from the official sapiens/ folders (largest model first); HuBERT features chosen by name."
    for size, value in (('sapiens_0.3b', 1.0), ('sapiens_1b', 2.0)):
        (copy / 'sapiens' / 'depth' / size).mkdir(parents=True)
        np.save(copy / 'sapiens' / 'depth' / size / '0.npy', np.full((64, 64), value, np.float32))
    np.save(copy / 'aud_hu.npy', np.zeros((10, 2, 1024), np.float32))
    ds = TalkingHeadDataset(copy, DataConfig(audio='hubert'))
    assert ds.frame(0).depth.mean() == 2.0 and ds.frame(1).depth is None and ds.frame(0).normal is None
    assert ds.audio_features.shape == (10, 2, 1024) and ds.frame(5).audio.shape == (8, 2, 1024)
    with pytest.raises(UserError, match='looked for aud_eo.npy'): TalkingHeadDataset(copy, DataConfig(audio='wav2vec'))


def test_check_data_decodes_every_image(copy):
    p = copy / 'gt_imgs' / '3.jpg'
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])  # a truncated JPEG: its header still opens
    problems, stats = check_data(copy)
    assert not stats['ok'] and any('do not decode' in q and 'gt_imgs/3.jpg' in q for q in problems), problems

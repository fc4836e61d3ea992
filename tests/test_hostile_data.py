"""Hostile or damaged dataset inputs: paths that leave the dataset, symlinked outputs, corrupt frames, tampered .npy files
and odd corpus lists each give one line that names the file and the fix, before any work, and never touch what lies
outside the dataset."""
import io, json, shutil
from pathlib import Path

import numpy as np
import pytest

from instag.check_data import check_data
from instag.cli import main
from instag.core import UserError
from instag.data import TalkingHeadDataset
from instag.example_data import write_example_dataset
from instag.layout import Metadata
from instag.video import write_test_video

SR = 16000


@pytest.fixture(scope='module')
def official(tmp_path_factory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp('hostile') / 'ds', frames=12, size=48, val_frames=3)


@pytest.fixture
def ds(official, tmp_path) -> Path:
    "A fresh copy of the tiny dataset to damage."
    return Path(shutil.copytree(official, tmp_path / 'ds'))


def _one_line(capsys, argv: list[str]) -> str:
    "Run the CLI in-process; it must exit 2 with exactly one line on stderr, which is returned."
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert code == 2 and len(err) == 1, (code, err)
    return err[0]


def _clip(path: Path, seconds: float = 3.2, audio: bool = True) -> Path:
    frames = np.random.default_rng(1).integers(0, 255, (int(seconds * 25), 64, 64, 3), dtype=np.uint8)
    wav = (0.3 * np.sin(2 * np.pi * 180 * np.arange(int(seconds * SR)) / SR)).astype(np.float32) if audio else None
    return write_test_video(path, frames, fps=25, audio=wav)


def _with_metadata(root: Path, **features) -> Path:
    "Give the official-layout copy an instag metadata.json listing `features` (name -> file)."
    x = np.load(root / 'aud_ds.npy')
    Metadata(fps=25, width=48, height=48, frames=12, source='synthetic', complete=True,
             audio_features={k: dict(file=f, shape=list(x.shape), encoder='hubert') for k, f in features.items()}).write(root)
    return root


# ---------------------------------------------------------------- prepare-corpus: names, --out, the list itself

@pytest.mark.parametrize('name', ['../escaped', 'ABS', 'a/b', '..'])
def test_corpus_row_name_outside_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch, name):
    import instag.prepare.corpus as corpus
    calls = []
    monkeypatch.setattr(corpus, 'prepare', lambda video, out, *a, **k: calls.append(Path(out)))
    name = str(tmp_path / 'abs_target') if name == 'ABS' else name
    (tmp_path / 'list.csv').write_text(f'name,video\nok,a.mp4\n{name},b.mp4\n')
    line = _one_line(capsys, ['prepare-corpus', tmp_path / 'list.csv', '--out', tmp_path / 'corpus', '--audio-encoder', 'none'])
    assert 'name' in line and 'list.csv' in line, line
    assert calls == [] and not (tmp_path / 'corpus').exists() and not (tmp_path / 'escaped').exists()


def test_corpus_out_is_an_existing_file(tmp_path, capsys):
    (tmp_path / 'list.csv').write_text('name,video\nok,a.mp4\n')
    (tmp_path / 'out.txt').write_text('mine')
    line = _one_line(capsys, ['prepare-corpus', tmp_path / 'list.csv', '--out', tmp_path / 'out.txt', '--audio-encoder', 'none'])
    assert 'out.txt' in line and 'folder' in line, line
    assert (tmp_path / 'out.txt').read_text() == 'mine'


def test_corpus_list_that_is_a_video(tmp_path, capsys):
    clip = _clip(tmp_path / 'talk.mp4', 1.0)
    line = _one_line(capsys, ['prepare-corpus', clip, '--out', tmp_path / 'corpus', '--audio-encoder', 'none'])
    assert 'talk.mp4' in line and 'instag prepare' in line, line
    assert not (tmp_path / 'corpus').exists()


# ---------------------------------------------------------------- paths in a dataset stay inside it

@pytest.mark.parametrize('where', ['relative', 'absolute', 'symlink'])
def test_audio_feature_file_outside_the_dataset_is_refused(ds, tmp_path, capsys, where):
    outside = tmp_path / 'outside'; outside.mkdir()
    np.save(outside / 'x.npy', np.zeros((12, 2, 1024), np.float32))
    if where == 'symlink':
        (ds / 'aud_hu.npy').symlink_to(outside / 'x.npy'); _with_metadata(ds, hubert='aud_hu.npy')
    else: _with_metadata(ds, hubert='../outside/x.npy' if where == 'relative' else str(outside / 'x.npy'))
    problems, stats = check_data(ds)
    assert not stats['ok'] and any('outside the dataset' in p for p in problems), problems
    with pytest.raises(UserError, match='outside the dataset'): TalkingHeadDataset(ds)
    assert 'outside the dataset' in _one_line(capsys, ['train', ds, '--seconds', '0.2', '--out', tmp_path / 'runs'])
    assert not (tmp_path / 'runs').exists()


def test_frame_symlinked_outside_the_dataset_is_refused(ds, tmp_path):
    (tmp_path / 'elsewhere.jpg').write_bytes((ds / 'gt_imgs' / '3.jpg').read_bytes())
    (ds / 'gt_imgs' / '3.jpg').unlink(); (ds / 'gt_imgs' / '3.jpg').symlink_to(tmp_path / 'elsewhere.jpg')
    with pytest.raises(UserError, match=r'gt_imgs/3.jpg.*outside the dataset'): TalkingHeadDataset(ds)
    problems, stats = check_data(ds)
    assert not stats['ok'] and any('gt_imgs/3.jpg' in p and 'outside the dataset' in p for p in problems), problems


def test_a_symlinked_dataset_folder_still_loads(ds, tmp_path):
    "Regression guard: the dataset folder itself may be a link (corpora are assembled that way)."
    (tmp_path / 'link').symlink_to(ds)
    assert len(TalkingHeadDataset(tmp_path / 'link')) == 12 and check_data(tmp_path / 'link')[1]['ok']


# ---------------------------------------------------------------- prepare --overwrite: validate first, never follow links

def _old_dataset(out: Path, finger: str = 'x', complete: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    Metadata(fps=25, width=64, height=64, frames=10, source='other.mp4', complete=complete, extra=dict(fingerprint=finger)).write(out)
    for s in ('train', 'val'): (out / f'transforms_{s}.json').write_text('{"frames": []}')


def test_overwrite_keeps_the_old_dataset_when_the_input_is_refused(tmp_path):
    from instag.prepare.pipeline import prepare
    out = tmp_path / 'ds'; _old_dataset(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match='no audio track'):
        prepare(_clip(tmp_path / 'mute.mp4', audio=False), out, overwrite=True, progress=False, audio_encoder='none')
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_removes_a_symlink_never_its_target(tmp_path, monkeypatch):
    import instag.prepare.pipeline as pipeline
    def no_face(*a, **k): raise UserError('no face found (stub)')
    monkeypatch.setattr(pipeline, 'run_tracking', no_face)
    mine = tmp_path / 'my_photos'; mine.mkdir(); (mine / '0.jpg').write_bytes(b'precious')
    out = tmp_path / 'ds'; _old_dataset(out); (out / 'ori_imgs').symlink_to(mine, target_is_directory=True)
    with pytest.raises(UserError, match='no face found'):
        pipeline.prepare(_clip(tmp_path / 'clip.mp4'), out, overwrite=True, progress=False, audio_encoder='none')
    assert (mine / '0.jpg').read_bytes() == b'precious' and not (out / 'ori_imgs').is_symlink()


def test_resume_refuses_to_write_through_a_symlink(tmp_path, monkeypatch):
    import instag.prepare.pipeline as pipeline
    monkeypatch.setattr(pipeline, 'run_tracking', lambda *a, **k: pytest.fail('tracking started'))
    clip = _clip(tmp_path / 'clip.mp4')
    out = tmp_path / 'ds'; _old_dataset(out, pipeline.fingerprint(clip, None, pipeline.PrepareConfig()), complete=False)
    mine = tmp_path / 'elsewhere'; mine.mkdir()
    (out / 'instag').symlink_to(mine, target_is_directory=True)
    with pytest.raises(UserError, match=r'instag is a symbolic link.*--overwrite'):
        pipeline.prepare(clip, out, progress=False, audio_encoder='none')
    assert list(mine.iterdir()) == []


# ---------------------------------------------------------------- corrupt frames: refused before step 1

@pytest.mark.parametrize('damage', ['truncated jpg', 'garbage png'])
def test_corrupt_frame_is_refused_before_training(ds, tmp_path, capsys, damage):
    from instag.train import train, train_config
    if damage == 'truncated jpg':
        bad = ds / 'gt_imgs' / '7.jpg'; bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    else: bad = ds / 'parsing' / '4.png'; bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'not really' * 20)
    rel = f'{bad.parent.name}/{bad.name}'
    with pytest.raises(UserError, match=rf'{rel}.*instag prepare'):
        train(ds, train_config('cpu', seconds=0.3, face_iterations=2, mouth_iterations=1, fuse_iterations=1, static_iterations=0,
                               eval_frames=2, eval_lmd=False, threads=1), run_dir=tmp_path / 'run', verbose=False)
    assert not (tmp_path / 'run').exists()
    assert rel in _one_line(capsys, ['train', ds, '--seconds', '0.3', '--out', tmp_path / 'runs'])
    assert not (tmp_path / 'runs').exists()


def test_jpeg_with_bytes_after_its_end_marker_still_loads(ds):
    "Regression guard: the cheap frame check falls back to a full decode and refuses only what does not decode."
    p = ds / 'gt_imgs' / '2.jpg'; p.write_bytes(p.read_bytes() + b'\0' * 300)
    assert TalkingHeadDataset(ds).frame(2).image.shape == (48, 48, 3)


# ---------------------------------------------------------------- tampered .npy files

class _Evil:
    def __init__(self, target): self.target = str(target)
    def __reduce__(self): return (open, (self.target, 'w'))


def _pickled(path: Path, target: Path) -> None:
    np.save(path, np.array([_Evil(target)] * 12, dtype=object), allow_pickle=True)


def _truncated(path: Path) -> None:
    data = path.read_bytes(); path.write_bytes(data[:len(data) - 8])


def _oversized(path: Path) -> None:
    "A header that claims a billion frames over a file of a few bytes."
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, dict(descr='<f4', fortran_order=False, shape=(10**9, 16, 29)))
    path.write_bytes(buf.getvalue() + b'\0' * 64)


@pytest.mark.parametrize('file', ['aud_ds.npy', 'teeth_mask/5.npy', 'instag/mouth_open.npy'])
@pytest.mark.parametrize('damage', ['pickled', 'truncated', 'oversized'])
def test_tampered_npy_gives_one_line(ds, tmp_path, capsys, file, damage):
    path = ds / file
    if file == 'instag/mouth_open.npy': path.parent.mkdir(); np.save(path, np.zeros(12, np.float32))
    {'pickled': lambda p: _pickled(p, tmp_path / 'pwned'), 'truncated': _truncated, 'oversized': _oversized}[damage](path)
    with pytest.raises(UserError, match=rf'{file}.*(instag prepare|re-extract)') as e: TalkingHeadDataset(ds)
    assert '\n' not in str(e.value)
    problems, stats = check_data(ds)
    assert not stats['ok'] and any(file in p for p in problems), problems
    assert file in _one_line(capsys, ['train', ds, '--seconds', '0.2', '--out', tmp_path / 'runs'])
    assert not (tmp_path / 'pwned').exists() and not (tmp_path / 'runs').exists()


def test_damage_the_cheap_check_misses_is_one_line_when_read(ds):
    "Bytes broken inside a PNG whose start and end markers are intact: the frame that reads it names the file."
    p = ds / 'torso_imgs' / '6.png'; data = bytearray(p.read_bytes())
    start = data.index(b'IDAT') + 8; data[start:start + 40] = b'\xff' * 40; p.write_bytes(bytes(data))
    ds_ = TalkingHeadDataset(ds)
    with pytest.raises(UserError, match=r'torso_imgs/6.png does not decode.*instag prepare') as e: ds_.frame(6)
    assert '\n' not in str(e.value)

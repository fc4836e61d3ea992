"""Every user mistake gets one line that names the problem and the fix, exit code 2, no traceback (issue: safe to open)."""
import json, shutil, subprocess, sys
from pathlib import Path

import pytest


from helpers import TINY, tiny_world


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('bad')
    ds, run = tiny_world(root, {'speech': 1.0})
    wav = root / 'speech.wav'
    (root / 'empty.wav').write_bytes(b'')
    (root / 'a_file.txt').write_text('not a folder')
    (root / 'folder.mp4').mkdir()
    readonly = root / 'readonly'; readonly.mkdir(); readonly.chmod(0o555)
    broken = {}
    for name, damage in (('empty_model', lambda r: (r / 'model.pt').write_bytes(b'')),
                         ('truncated_model', lambda r: (r / 'model.pt').write_bytes((r / 'model.pt').read_bytes()[:300]))):
        d = root / name; shutil.copytree(run, d); damage(d); broken[name] = d
    for name, damage in (('bad_transforms', lambda d: (d / 'transforms_train.json').write_text('{"frames": [')),
                         ('bad_metadata', lambda d: (d / 'metadata.json').write_text('{not json'))):
        d = root / name; shutil.copytree(ds, d); damage(d); broken[name] = d
    from instag.synth.corpus import synthesize
    person = synthesize(identities=1, seconds=2, size=48, seed=5, out=root / 'corpus', progress=False, video=False)[0]
    d = root / 'incomplete'; shutil.copytree(person, d)
    meta = json.loads((d / 'metadata.json').read_text()); meta['complete'] = False
    (d / 'metadata.json').write_text(json.dumps(meta)); broken['incomplete'] = d
    d = root / 'no_train'; shutil.copytree(person, d)
    tr, va = (json.loads((d / f'transforms_{k}.json').read_text()) for k in ('train', 'val'))
    va['frames'] = tr['frames'] + va['frames']; tr['frames'] = []
    for k, v in (('train', tr), ('val', va)): (d / f'transforms_{k}.json').write_text(json.dumps(v))
    broken['no_train'] = d
    return dict(root=root, ds=ds, run=run, wav=wav, person=person, **broken)


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'instag', *args], capture_output=True, text=True, timeout=300, cwd=cwd)


CASES = {
    'render --threads -3': (lambda w: ['render', w['run'], '--audio', w['wav'], '--threads', '-3'], '--threads'),
    'render --out a folder': (lambda w: ['render', w['run'], '--audio', w['wav'], '--out', w['root'] / 'folder.mp4'], 'folder'),
    'render --out not mp4': (lambda w: ['render', w['run'], '--audio', w['wav'], '--out', w['root'] / 'talk.avi'], '.mp4'),
    'render --out not writable': (lambda w: ['render', w['run'], '--audio', w['wav'], '--out', '/proc/instag-talk.mp4'], 'cannot write'),
    'render --audio 0-byte': (lambda w: ['render', w['run'], '--audio', w['root'] / 'empty.wav'], 'empty'),
    'render empty model.pt': (lambda w: ['render', w['empty_model'], '--audio', w['wav']], 'model.pt'),
    'render truncated model.pt': (lambda w: ['render', w['truncated_model'], '--audio', w['wav']], 'model.pt'),
    'train corrupt transforms': (lambda w: ['train', w['bad_transforms'], '--seconds', '0.4'], 'transforms_train.json'),
    'train corrupt metadata': (lambda w: ['train', w['bad_metadata'], '--seconds', '0.4'], 'metadata.json'),
    'train incomplete dataset': (lambda w: ['train', w['incomplete'], '--seconds', '1'], 'complete: false'),
    'train no training frames': (lambda w: ['train', w['no_train'], '--seconds', '1'], 'no training frames'),
    'adapt incomplete dataset': (lambda w: ['adapt', w['incomplete'], '--seconds', '1'], 'complete: false'),
    'synth --size 63': (lambda w: ['synth', '--size', '63', '--out', w['root'] / 's1'], '--size'),
    'synth --size 100000': (lambda w: ['synth', '--size', '100000', '--out', w['root'] / 's2'], '--size'),
    'synth --seconds nan': (lambda w: ['synth', '--seconds', 'nan', '--out', w['root'] / 's3'], '--seconds'),
    'synth --out a file': (lambda w: ['synth', '--out', w['root'] / 'a_file.txt'], 'a_file.txt'),
    'view --port 99999': (lambda w: ['view', 'toy', '--port', '99999'], '--port'),
    'view --port -1': (lambda w: ['view', 'toy', '--port', '-1'], '--port'),
    'evaluate --test not a dataset': (lambda w: ['evaluate', w['run'], '--test', w['root'] / 'a_file.txt'], '--test'),
    'evaluate --frames -1': (lambda w: ['evaluate', w['run'], '--frames', '-1'], '--frames'),
    'evaluate --audio 0-byte': (lambda w: ['evaluate', w['run'], '--audio', w['root'] / 'empty.wav'], 'empty'),
    'evaluate --lpips without weights': (lambda w: ['evaluate', w['run'], '--lpips', w['root']], 'alexnet.pth is missing'),
    'evaluate truncated model.pt': (lambda w: ['evaluate', w['truncated_model']], 'model.pt'),
    'prepare --out not writable': (lambda w: ['prepare', w['wav'], '--out', '/proc/instag-dataset'], 'cannot write'),
    'prepare --val-fraction 1.5': (lambda w: ['prepare', w['wav'], '--out', w['root'] / 'p1', '--val-fraction', '1.5'], 'val-fraction'),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_one_line_and_exit_2(world, case):
    make, says = CASES[case]
    r = _run(*map(str, make(world)))
    assert r.returncode == 2, (case, r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr, (case, r.stderr[-2000:])
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and says in lines[0], (case, r.stderr[-2000:])


class _Evil:
    "Unpickling this creates a file: what a crafted model.pt shared with a run folder could do."
    def __init__(self, target): self.target = str(target)
    def __reduce__(self): return (open, (self.target, 'w'))


@pytest.mark.parametrize('what', ['model', 'checkpoint', 'prior'])
def test_a_crafted_pickle_is_refused_and_runs_nothing(world, tmp_path, what):
    import torch
    target = tmp_path / 'pwned'
    run = tmp_path / 'run'; shutil.copytree(world['run'], run)
    if what == 'model':
        torch.save({'format': 1, 'x': _Evil(target)}, run / 'model.pt')
        args = ['render', run, '--audio', world['wav'], '--out', tmp_path / 'x.mp4']
    elif what == 'checkpoint':
        (run / 'model.pt').unlink(); torch.save({'x': _Evil(target)}, run / 'checkpoint.pt')
        args = ['train', '--resume', run]
    else:
        torch.save({'kind': 'instag-prior', 'x': _Evil(target)}, tmp_path / 'evil.pt')
        args = ['adapt', world['ds'], '--prior', tmp_path / 'evil.pt']
    r = _run(*map(str, args))
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert not target.exists(), 'the pickle ran code'


@pytest.mark.parametrize('job', ['train', 'adapt'])
def test_a_failed_start_leaves_no_run_folder(world, tmp_path, job):
    from instag.runs import list_runs
    r = _run(job, str(world['person']), '--seconds', '999', '--out', str(tmp_path))
    assert r.returncode == 2 and 'asked to train on 999' in r.stderr, r.stderr[-2000:]
    assert list_runs(tmp_path) == [] and not list(tmp_path.rglob('config.yaml'))


def test_resume_refuses_a_checkpoint_of_another_config_and_follows_a_moved_dataset(world, tmp_path):
    import yaml
    run = tmp_path / 'run'; shutil.copytree(world['run'], run)
    cfg = yaml.safe_load((run / 'config.yaml').read_text()); cfg['face_iterations'] = 7
    (run / 'config.yaml').write_text(yaml.safe_dump(cfg))
    r = _run('train', '--resume', str(run))
    assert r.returncode == 2 and 'face_iterations = 2' in r.stderr and 'says 7' in r.stderr, r.stderr[-2000:]
    run = tmp_path / 'run2'; shutil.copytree(world['run'], run)
    moved = tmp_path / 'moved'; shutil.copytree(world['ds'], moved)
    r = _run('train', '--resume', str(run), '--data', str(world['person']))
    assert r.returncode == 2 and 'another recording' in r.stderr, r.stderr[-2000:]
    r = _run('train', '--resume', str(run), '--data', str(moved), '--no-eval', '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / 'run.json').read_text())['dataset'] == str(moved.resolve())


def test_render_refuses_another_persons_dataset_unless_forced(world, tmp_path):
    args = ['render', str(world['run']), '--audio', str(world['wav']), '--data', str(world['person']), '--quiet']
    r = _run(*args, '--out', str(tmp_path / 'a.mp4'))
    assert r.returncode == 2 and 'another recording' in r.stderr and '--force' in r.stderr, r.stderr[-2000:]
    r = _run(*args, '--out', str(tmp_path / 'b.mp4'), '--force')
    assert r.returncode == 0 and (tmp_path / 'b.mp4').exists(), r.stderr[-2000:]


def test_a_failed_evaluation_leaves_a_run_that_is_not_finished(world, tmp_path):
    from instag.runs import list_runs
    ds = tmp_path / 'ds'; shutil.copytree(world['ds'], ds)
    # a held-out frame's parsing map damaged inside its image data: the dataset's up-front check (start and end markers)
    # passes it, training never reads it, the evaluation fails to decode it
    p = ds / 'parsing' / '18.png'; data = bytearray(p.read_bytes())
    s = data.index(b'IDAT') + 8; data[s:s + 40] = b'\xff' * 40; p.write_bytes(bytes(data))
    args = [f'{k}={v}' for k, v in {**TINY, 'eval_frames': 0}.items() if k != 'seconds']
    r = _run('train', str(ds), '--seconds', '0.4', '--out', str(tmp_path / 'out'), '--quiet', *sum((['-p', a] for a in args), []))
    assert r.returncode == 2 and 'evaluation failed' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    (run,) = list_runs(tmp_path / 'out')
    assert not run['finished'] and 'error' in run['metrics'] and (Path(run['path']) / 'model.pt').exists()

"""`instag experiment` and `instag runs` against hostile input: foreign files at the results path, a bad --kernel with --redo,
two processes on one spec, unreadable specs, a foreign --index, unknown --metrics. Each refusal is one line and exit 2."""
import csv, json, os, signal, socket, subprocess, sys, time
from pathlib import Path

import pytest
import yaml

from instag.cli import main
from instag.core import UserError
from instag.example_data import write_example_dataset

TINY = dict(face_iterations=3, mouth_iterations=2, fuse_iterations=1, static_iterations=0,
            synthesizer__face__init_points=60, synthesizer__mouth__init_points=30, eval_frames=2, eval_lmd=False,
            threads=1, data__audio='mel')


@pytest.fixture(scope='module')
def ds(tmp_path_factory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp('data') / 'ds', frames=20, size=48, val_frames=6)


def _spec(tmp_path: Path, ds: Path, name='tiny', results=None, table='T0', seeds=(0, 1), extra=()) -> Path:
    spec = dict(name=name, root=str(tmp_path / 'runs'), defaults=dict(train=dict(preset='cpu', **TINY)),
                grids=[dict(table=table, job='train', dataset=[str(ds)], seconds=[0.4], seed=list(seeds)), *extra])
    if results is not None: spec['results'] = str(results)
    path = tmp_path / 'spec.yaml'; path.write_text(yaml.safe_dump(spec))
    return path


def _finish(cell) -> None:
    "Make `cell` look finished (as a run of an earlier session left it): its state says done and its model is there."
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / 'model.pt').write_bytes(b'weights')
    (cell.run_dir / 'cell.json').write_text(json.dumps(dict(cell=cell.name, key=cell.key, status='done')))


@pytest.fixture
def stub_runs(monkeypatch):
    "Replace the template execution by a stub that records the cells it was asked to run (no kernel, no training)."
    import instag.experiment as ex
    ran = []
    def run_cell(c, cells, spec, kernel=None):
        c.run_dir.mkdir(parents=True, exist_ok=True)
        lock = c.run_dir.parent / '.locks' / f'{c.run_dir.name}.lock'
        ran.append((c.name, json.loads(lock.read_text()).get('pid') if lock.exists() else None))
        (c.run_dir / 'metrics.json').write_text(json.dumps(dict(psnr=30.0, lip_gap_first=0, lip_gap_render=[1.0], lip_gap_truth=[1.5])))
        state = dict(cell=c.name, key=c.key, status='failed', error='stub')
        (c.run_dir / 'cell.json').write_text(json.dumps(state))
        return state
    monkeypatch.setattr(ex, 'run_cell', run_cell)
    return ran


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


# 1. the results table is written only over a table the experiment owns

def test_the_results_table_never_overwrites_a_foreign_csv(tmp_path, ds, stub_runs):
    from instag.experiment import run_experiment
    results = tmp_path / 'results'; results.mkdir()
    accounts = results / 'accounts.csv'
    accounts.write_text('id,name,balance\n1,ada,100\n2,bob,-5\n')
    before = accounts.read_bytes()
    spec = _spec(tmp_path, ds, name='accounts', results=results)
    with pytest.raises(UserError, match='accounts.csv is not a table instag experiment wrote'):
        run_experiment(spec, progress=False)
    assert accounts.read_bytes() == before
    assert stub_runs == [], 'a cell ran although its table could not be written'


def test_the_lip_gap_table_never_overwrites_a_foreign_csv(tmp_path, ds, stub_runs):
    from instag.experiment import run_experiment
    results = tmp_path / 'results'; results.mkdir()
    notes = results / 'accounts_lipgap.csv'
    notes.write_text('cell,notes\nx,keep me\n')
    before = notes.read_bytes()
    spec = _spec(tmp_path, ds, name='accounts', results=results, table='T1')
    with pytest.raises(UserError, match='accounts_lipgap.csv is not a table'):
        run_experiment(spec, progress=False)
    assert notes.read_bytes() == before and not (results / 'accounts.csv').exists()


def test_the_committed_protocol_tables_are_recognized_as_owned():
    "Regression guard: the tables the protocol specs wrote (nbs/experiments/results) stay writable by those specs."
    from instag.experiment import LIPGAP_COLUMNS, TABLE_COLUMNS, check_owned, load_spec
    from instag.core import PROJECT_ROOT
    found = 0
    for spec in sorted((PROJECT_ROOT / 'nbs' / 'experiments' / 'protocol').glob('*.yaml')):
        s, base = load_spec(spec)
        table = (base / s.results / f'{s.name}.csv').resolve()
        if table.exists(): check_owned(table, TABLE_COLUMNS); found += 1
        gaps = table.with_name(f'{table.stem}_lipgap.csv')
        if gaps.exists(): check_owned(gaps, LIPGAP_COLUMNS)
    assert found >= 2


def test_a_table_the_batch_wrote_is_written_again(tmp_path, ds, stub_runs):
    "Regression guard: a second session rewrites its own table."
    from instag.experiment import run_experiment
    results = tmp_path / 'results'
    spec = _spec(tmp_path, ds, name='accounts', results=results, seeds=(0,))
    run_experiment(spec, progress=False)
    run_experiment(spec, progress=False)
    rows = list(csv.DictReader(open(results / 'accounts.csv')))
    assert [(r['cell'], r['status']) for r in rows] == [('T0-train-ds-0.4s-default-s0', 'failed')]


# 4. everything is checked before --redo deletes a finished run

def test_redo_with_a_kernel_typo_keeps_the_finished_run(tmp_path, ds, capsys):
    from instag.experiment import expand, load_spec
    spec = _spec(tmp_path, ds)
    cells = expand(*load_spec(spec))
    _finish(cells[0])
    assert main(['experiment', str(spec), '--redo', 's0', '--kernel', 'pyhton3', '--quiet']) == 2
    line = _one_line(capsys.readouterr().err)
    assert "no Jupyter kernel is named 'pyhton3'" in line and 'python3' in line
    assert (cells[0].run_dir / 'model.pt').read_bytes() == b'weights'
    assert json.loads((cells[0].run_dir / 'cell.json').read_text())['status'] == 'done'
    assert not cells[1].run_dir.exists()


def test_redo_with_a_missing_dataset_elsewhere_in_the_batch_keeps_the_finished_run(tmp_path, ds, stub_runs):
    from instag.experiment import expand, load_spec, run_experiment
    spec = _spec(tmp_path, ds, seeds=(0,), extra=[dict(table='T9', job='train', dataset=[str(tmp_path / 'gone')], seconds=[0.4])])
    cells = expand(*load_spec(spec))
    _finish(cells[0])
    with pytest.raises(UserError, match='gone is missing'):
        run_experiment(spec, redo='s0', progress=False)
    assert (cells[0].run_dir / 'model.pt').exists() and stub_runs == []


def test_only_and_redo_that_match_no_cell_are_refused(tmp_path, ds, stub_runs):
    from instag.experiment import run_experiment
    spec = _spec(tmp_path, ds)
    with pytest.raises(UserError, match="--redo 's7' is in no cell name"): run_experiment(spec, redo='s7', progress=False)
    with pytest.raises(UserError, match="--only 'T1' is in no cell name"): run_experiment(spec, only='T1', progress=False)
    assert stub_runs == []


# 5. one process per cell folder: a lock with its holder; a dead holder's lock is taken over

def _state(d: Path) -> dict:
    try: return json.loads((d / 'cell.json').read_text())
    except (OSError, ValueError): return {}


def test_a_second_batch_on_the_same_spec_says_who_runs_it_and_touches_nothing(tmp_path, ds):
    spec = _spec(tmp_path, ds)
    cmd = [sys.executable, '-m', 'instag', 'experiment', str(spec), '--quiet']
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    second = None
    try:
        t0 = time.time()
        while True:  # until the first process is inside its first cell
            running = [d for d in (tmp_path / 'runs' / 'tiny').glob('T0-*') if _state(d).get('status') == 'running']
            if running: break
            assert first.poll() is None and time.time() - t0 < 120, 'the first batch did not start a cell'
            time.sleep(0.1)
        marker = running[0] / 'kept.txt'; marker.write_text('the first process works here')
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try: out, err = second.communicate(timeout=90)
        except subprocess.TimeoutExpired: pytest.fail('the second batch ran instead of refusing')
        assert second.returncode == 2, (out, err)
        line = _one_line(err)
        assert f'pid {first.pid} on {socket.gethostname()} since ' in line, line
        assert marker.exists(), "the second process deleted the first's running cell"
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, ds, stub_runs):
    from instag.experiment import expand, load_spec, run_experiment
    spec = _spec(tmp_path, ds, seeds=(0,))
    (cell,) = expand(*load_spec(spec))
    gone = subprocess.Popen([sys.executable, '-c', 'pass']); gone.wait()
    lock = cell.run_dir.parent / '.locks' / f'{cell.run_dir.name}.lock'
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps(dict(pid=gone.pid, host=socket.gethostname(), since='2000-01-01T00:00:00')))
    run_experiment(spec, progress=False)
    assert stub_runs == [(cell.name, os.getpid())], 'the cell ran without holding its lock'
    assert not lock.exists(), 'the lock outlived the batch'


# 15. bad arguments: one line each

@pytest.mark.parametrize('kind', ['folder', 'binary', 'seed', 'seconds'])
def test_an_unreadable_spec_is_one_line(tmp_path, ds, capsys, kind):
    path = tmp_path / 'spec.yaml'
    if kind == 'folder': path.mkdir()
    elif kind == 'binary': path.write_bytes(bytes(range(256)) * 4)
    else:
        grid = dict(job='train', dataset=[str(ds)], **({'seed': ['abc']} if kind == 'seed' else {'seconds': ['five']}))
        path.write_text(yaml.safe_dump(dict(name='x', root=str(tmp_path / 'runs'), grids=[grid])))
    assert main(['experiment', str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert {'folder': 'is a folder', 'binary': 'spec.yaml', 'seed': "seed 'abc' is not a whole number",
            'seconds': "seconds 'five' is not a number"}[kind] in line, line
    assert not (tmp_path / 'runs').exists()


def _a_run(root: Path) -> Path:
    run = root / 'train' / 'r1'; run.mkdir(parents=True)
    (run / 'run.json').write_text(json.dumps(dict(job='train', created='2000-01-01T00:00:00')))
    (run / 'metrics.json').write_text(json.dumps(dict(psnr=31.5, lmd=1.25)))
    return run


@pytest.mark.parametrize('kind', ['text', 'sqlite', 'folder'])
def test_runs_refuses_an_index_that_is_not_one(tmp_path, capsys, kind):
    import sqlite3
    _a_run(tmp_path / 'out')
    index = tmp_path / 'mine.db'
    if kind == 'text': index.write_text('my notes\n')
    elif kind == 'folder': index.mkdir()
    else:
        con = sqlite3.connect(str(index)); con.execute('CREATE TABLE accounts (id INTEGER, balance REAL)'); con.commit(); con.close()
    before = index.read_bytes() if index.is_file() else None
    assert main(['runs', str(tmp_path / 'out'), '--index', str(index)]) == 2
    assert 'mine.db' in _one_line(capsys.readouterr().err)
    assert (index.read_bytes() if index.is_file() else None) == before


def test_runs_names_the_metrics_that_exist(tmp_path, capsys):
    root = tmp_path / 'out'; _a_run(root)
    assert main(['runs', str(root), '--metrics', 'nosuch']) == 2
    line = _one_line(capsys.readouterr().err)
    assert 'nosuch' in line and 'lmd, psnr' in line, line
    assert main(['runs', str(root), '--metrics', 'psnr']) == 0   # a metric that exists still lists the runs
    (row,) = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert row['metric:psnr'] == 31.5

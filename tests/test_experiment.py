"""`instag experiment`: a tiny two-cell batch runs, is killed, resumes without redoing the finished cell, fills the index."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import yaml

from instag.example_data import write_example_dataset

TINY = dict(face_iterations=3, mouth_iterations=2, fuse_iterations=1, static_iterations=0,
            synthesizer__face__init_points=60, synthesizer__mouth__init_points=30, eval_frames=2, eval_lmd=False,
            threads=1, data__audio='mel')


def _spec(tmp_path: Path, ds: Path) -> Path:
    spec = dict(name='tiny', root=str(tmp_path / 'runs'), results=str(tmp_path / 'results'), defaults=dict(train=dict(preset='cpu', **TINY)),
                grids=[dict(table='T0', job='train', dataset=[str(ds)], seconds=[0.4], seed=[0, 1])])
    path = tmp_path / 'spec.yaml'; path.write_text(yaml.safe_dump(spec))
    return path


def _cell(tmp_path: Path, seed: int) -> Path:
    (d,) = (tmp_path / 'runs' / 'tiny').glob(f'T0-train-ds-0.4s-default-s{seed}-*')
    return d


def _state(d: Path) -> dict:
    try: return json.loads((d / 'cell.json').read_text())
    except (OSError, ValueError): return {}


def test_a_killed_batch_resumes_without_redoing_a_finished_cell(tmp_path):
    import sqlite3
    ds = write_example_dataset(tmp_path / 'ds', frames=20, size=48, val_frames=6)
    spec = _spec(tmp_path, ds)
    cmd = [sys.executable, '-m', 'instag', 'experiment', str(spec), '--quiet']
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.time()
    try:
        while time.time() - t0 < 240:  # wait until the first cell is done and the second has started
            done = list((tmp_path / 'runs' / 'tiny').glob('T0-train-ds-0.4s-default-s0-*'))
            second = list((tmp_path / 'runs' / 'tiny').glob('T0-train-ds-0.4s-default-s1-*'))
            if done and _state(done[0]).get('status') == 'done' and second and _state(second[0]).get('status') == 'running': break
            assert p.poll() is None, p.communicate()
            time.sleep(0.2)
        else: pytest.fail('the first cell did not finish in 240 s')
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    first = _cell(tmp_path, 0)
    before = (_state(first), (first / 'model.pt').stat().st_mtime_ns)
    assert _state(_cell(tmp_path, 1)).get('status') == 'running'   # killed mid-cell
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '2 of 2 cells done' in r.stdout
    assert (_state(first), (first / 'model.pt').stat().st_mtime_ns) == before, 'the finished cell was run again'
    assert _state(_cell(tmp_path, 1))['status'] == 'done'
    con = sqlite3.connect(str(tmp_path / 'runs' / 'tiny' / 'index.sqlite'))
    rows = con.execute("SELECT cell, seed, finished, experiment FROM runs ORDER BY seed").fetchall()
    assert [(r[1], r[2], r[3]) for r in rows] == [(0, 1, 'tiny'), (1, 1, 'tiny')], rows
    assert con.execute("SELECT count(*) FROM metrics WHERE name = 'psnr'").fetchone()[0] == 2
    import csv
    table = list(csv.DictReader(open(tmp_path / 'results' / 'tiny.csv')))
    assert [t['status'] for t in table] == ['done', 'done'] and all(float(t['psnr']) > 0 for t in table)


def test_a_failing_cell_is_recorded_and_the_batch_goes_on(tmp_path):
    from instag.experiment import run_experiment
    ds = write_example_dataset(tmp_path / 'ds', frames=20, size=48, val_frames=6)
    spec = dict(name='bad', root=str(tmp_path / 'runs'), defaults=dict(train=dict(preset='cpu', **TINY)),
                grids=[dict(table='T0', job='train', dataset=[str(ds)], seconds=[99.0, 0.4])])
    states = run_experiment(spec, progress=False)
    assert [s['status'] for s in states] == ['failed', 'done']
    assert 'asked to train on 99' in states[0]['error']


def test_a_finished_row_of_the_committed_table_counts_as_done(tmp_path):
    "Run folders do not outlive a session; the exported table does: its finished rows are not run again."
    import csv, shutil
    from instag.experiment import export_table, expand, load_spec, run_experiment
    ds = write_example_dataset(tmp_path / 'ds', frames=20, size=48, val_frames=6)
    spec = _spec(tmp_path, ds)
    cells = expand(*load_spec(spec))
    table = tmp_path / 'results' / 'tiny.csv'
    table.parent.mkdir()
    with open(table, 'w', newline='') as f:  # as a previous session committed it: the first cell finished
        w = csv.DictWriter(f, ['table', 'cell', 'key', 'status', 'psnr']); w.writeheader()
        w.writerow(dict(table='T0', cell=cells[0].name, key=cells[0].key, status='done', psnr='25.5'))
    assert [r['done'] for r in run_experiment(spec, dry=True)] == [True, False]
    assert [r['done'] for r in run_experiment(spec, dry=True, redo='s0')] == [False, False]
    export_table(cells, table)
    rows = list(csv.DictReader(open(table)))
    assert (rows[0]['status'], rows[0]['psnr'], rows[1]['status']) == ('done', '25.5', 'pending')


def test_the_lip_gap_rows_of_a_cell_whose_run_folder_is_gone_are_kept(tmp_path):
    "The per-frame lip-gap table, like the main one, keeps what an earlier session committed; a live run's rows are rewritten."
    import csv
    from instag.experiment import expand, export_lip_gaps, load_spec
    ds = write_example_dataset(tmp_path / 'ds', frames=20, size=48, val_frames=6)
    cells = expand(*load_spec(_spec(tmp_path, ds)))
    path = tmp_path / 'results' / 'tiny_lipgap.csv'; path.parent.mkdir()
    with open(path, 'w', newline='') as f:  # committed earlier: 2 frames of cell 0, 1 of cell 1
        w = csv.DictWriter(f, ['cell', 'table', 'person', 'variant', 'seed', 'frame', 'render', 'truth']); w.writeheader()
        for c, k in ((cells[0], 0), (cells[0], 1), (cells[1], 0)):
            w.writerow(dict(cell=c.name, table='T0', person='ds', variant='default', seed=c.seed, frame=k, render=0.1, truth=0.2))
    cells[1].run_dir.mkdir(parents=True)  # cell 1 runs again here: its new evaluation replaces the old rows
    (cells[1].run_dir / 'metrics.json').write_text(json.dumps(dict(lip_gap_first=10, lip_gap_render=[0.5, 0.6, 0.7], lip_gap_truth=[0.4, 0.5, 0.6])))
    export_lip_gaps(cells, ['T0'], path)
    rows = list(csv.DictReader(open(path)))
    assert [(r['cell'] == cells[0].name, r['frame']) for r in rows] == [(True, '0'), (True, '1'), (False, '10'), (False, '11'), (False, '12')]
    assert export_lip_gaps(cells, ['T9'], tmp_path / 'none.csv') is None


def test_an_older_batch_exports_the_rows_a_newer_spec_added(tmp_path):
    "Two `--only` parts of one spec may run at once; the one started before the spec gained a grid must not drop its rows."
    import csv
    from instag.experiment import expand, export_results, load_spec
    ds = write_example_dataset(tmp_path / 'ds', frames=20, size=48, val_frames=6)
    spec = _spec(tmp_path, ds)
    started_with = expand(*load_spec(spec))
    d = yaml.safe_load(spec.read_text())
    d['grids'].append(dict(table='T9', job='train', dataset=[str(ds)], seconds=[0.4], seed=[5]))
    spec.write_text(yaml.safe_dump(d))  # what the other process runs
    table = tmp_path / 'results' / 'tiny.csv'
    rows = list(csv.DictReader(open(export_results(spec, started_with, table, []))))
    assert [(r['table'], r['seed']) for r in rows] == [('T0', '0'), ('T0', '1'), ('T9', '5')]
    spec.write_text('grids: [')  # caught mid-edit: the cells it started with
    rows = list(csv.DictReader(open(export_results(spec, started_with, table, []))))
    assert [r['table'] for r in rows] == ['T0', 'T0']

"""One way through each hallway: JSON written by one atomic `write_json`, PSNR from `instag.metrics`, the job plumbing from
`instag.jobs`, a pre-training run read through `instag.prior`, papermill launched by `instag.runs` only, run file names
from `instag.runs`, and the notebook widgets drawing through the viewer's frame path and loss figure."""
import ast, json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

import instag
from instag.core import read_json, write_json
from instag.example_data import write_example_dataset

PKG = Path(instag.__file__).resolve().parent
ROOT = PKG.parent
RUN_FILE_NAMES = ('run.json', 'config.yaml', 'checkpoint.pt', 'model.pt', 'losses.json', 'loss_curve.html', 'metrics.json',
                  'test_strip.png')
# JSON still written inline (json.dumps inside atomic_write_bytes) in modules whose notebooks another change owns:
# {module: at most this many}; move them to `write_json` and drop them from here
INLINE_JSON_LEFT = {'instag.layout': 2, 'instag.prepare.corpus': 1, 'instag.synth.corpus': 1}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob('*.py')):
        if p.name == '_modidx.py': continue
        parts = list(p.relative_to(ROOT).with_suffix('').parts)
        if parts[-1] == '__init__': parts.pop()
        out['.'.join(parts)] = p
    return out


def _calls(tree, name: str):
    "Calls of a function spelled `name` or `<anything>.name`."
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == name) or (isinstance(f, ast.Attribute) and f.attr == name): yield node


def test_write_json_is_atomic_and_reads_back(tmp_path):
    p = tmp_path / 'm.json'
    write_json(p, dict(psnr=30.5, rows=[1, 2]))
    assert read_json(p) == dict(psnr=30.5, rows=[1, 2]) and p.read_text().endswith('}\n') and '\n ' in p.read_text()
    write_json(p, [dict(a=1)], indent=None)
    assert p.read_text() == '[{"a": 1}]\n'
    with pytest.raises(TypeError):
        write_json(p, dict(bad=object()))                    # not serializable: the file keeps what it held
    assert read_json(p) == [dict(a=1)] and sorted(q.name for q in tmp_path.iterdir()) == ['m.json']
    write_json(p, dict(when=Path('x')), default=str)
    assert read_json(p) == dict(when='x')


def test_no_inline_json_writes():
    found = {}
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == 'write_json')]  # the one place
        n = sum(any(isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == 'dumps'
                    for a in call.args for c in ast.walk(a)) for call in _calls(tree, 'atomic_write_bytes'))
        if n: found[name] = n
    over = {k: v for k, v in found.items() if v > INLINE_JSON_LEFT.get(k, 0)}
    assert not over, f'JSON written inline in {over}: use instag.core.write_json'


def test_psnr_has_one_home():
    from instag import evaluate, losses, metrics, trainer
    assert trainer.psnr is losses.psnr and metrics.psnr is losses.psnr and evaluate.psnr is losses.psnr
    x = torch.full((4, 4, 3), 0.5)
    assert abs(metrics.psnr(x + 0.1, x) - 20.0) < 1e-3


def test_jobs_share_one_plumbing():
    from instag import adapt, jobs, pretrain, train
    for name in ('claim_run_dir', 'resolve_dataset', 'run_dataset', 'run_overrides', 'report_run', 'add_run_options'):
        for job in (train, adapt):
            assert getattr(job, name) is getattr(jobs, name), (job.__name__, name)
    assert pretrain.claim_run_dir is jobs.claim_run_dir and pretrain.parse_params is jobs.parse_params


def test_only_runs_launches_papermill():
    callers = sorted(name for name, path in _modules().items()
                     if any(isinstance(c.func, ast.Attribute) and isinstance(c.func.value, ast.Name)
                            and c.func.value.id in ('pm', 'papermill') for c in _calls(ast.parse(path.read_text()), 'execute_notebook')))
    assert callers == ['instag.runs'], callers


@pytest.mark.parametrize('module', ['instag.core', 'instag.view.scenes'])
def test_run_file_names_come_from_runs(module):
    "No `path / 'model.pt'` spelled out: the names are instag.runs' constants (core, below runs, names no run file)."
    tree = ast.parse(_modules()[module].read_text())
    spelled = [n.right.value for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)
               and isinstance(n.right, ast.Constant) and n.right.value in RUN_FILE_NAMES]
    assert not spelled, f'{module} spells {spelled}: use the constants of instag.runs'


def test_adapt_tools_are_gone_and_nothing_imports_them():
    assert not (ROOT / 'tools' / 'adapt_grid.py').exists() and not (ROOT / 'tools' / 'adapt_table.py').exists()
    for nb in (ROOT / 'nbs').rglob('*.ipynb'):
        code = ''.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
        assert 'adapt_table' not in code and 'adapt_grid' not in code, nb


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp('ds') / 'ds', frames=20, size=40, val_frames=6)


def test_viewer_reads_a_pretraining_run_without_the_job(dataset, tmp_path):
    "A pre-training run's model.pt and config.yaml, read by the viewer in a process that never imports the pre-training job."
    from instag.data import DataConfig
    from instag.prior import PretrainModel, save_pretrain
    from instag.runs import CONFIG, write_run_info
    from instag.talking_head import SynthesizerConfig, face_branch_config, mouth_branch_config
    syn = SynthesizerConfig(face=face_branch_config(init_points=40, personal_hidden=8),
                            mouth=mouth_branch_config(init_points=20, personal_hidden=8))
    run = tmp_path / 'pre'
    run.mkdir()
    write_run_info(run, 'pretrain', None, datasets=[str(dataset)])
    (run / CONFIG).write_text(json.dumps(dict(data=DataConfig(audio='mel', cache_mb=8).to_dict())))  # JSON is YAML
    save_pretrain(run, PretrainModel(syn, ['ds']), dict(datasets=[str(dataset)], test_ids=[[18, 19]]))
    code = ('import sys\nfrom instag.view.scenes import run_head, scene_from_path\n'
            f'h = run_head({str(run)!r})\n'
            'print(h.name, h.ds.config.audio, h.ds.config.cache_mb, len(h.frames), sorted(scene_from_path(h.run_dir).components))\n'
            "print(sorted(m for m in ('instag.pretrain', 'instag.pretrain_eval', 'instag.train', 'instag.trainer') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    first, loaded = out.stdout.strip().splitlines()[-2:]
    assert first.startswith('pre: ds (pre-training, identity 0) mel 8 18'), first
    assert 'universal + personal' in first
    assert loaded == "['instag.trainer']" or loaded == '[]', f'the viewer imported {loaded}'
    assert 'instag.pretrain' not in loaded


@pytest.fixture(scope='module')
def finished(dataset, tmp_path_factory):
    from instag.train import train, train_config
    cfg = train_config('cpu', seconds=0.4, face_iterations=4, mouth_iterations=2, fuse_iterations=1, static_iterations=0,
                       synthesizer__face__init_points=60, synthesizer__mouth__init_points=30, data__audio='mel', threads=1,
                       checkpoint_every_s=1e9)
    return train(dataset, cfg, run_dir=tmp_path_factory.mktemp('r') / 'run', verbose=False, evaluate=False)


def test_explorer_draws_what_the_viewer_and_instag_render_draw(finished):
    pytest.importorskip('ipywidgets')
    from instag.talking_head import to_uint8
    from instag.view.viewer import ViewState, make_render_fn
    from instag.widgets import DeformationExplorer
    e = DeformationExplorer(finished.run_dir)
    e.frame.value = 3
    camera = e.head.frame(3).camera
    torch.testing.assert_close(torch.from_numpy(e.render()), torch.from_numpy(to_uint8(e.head.render(3).rgb)), atol=1, rtol=0)
    e.colour.value = '|d_mu|'
    viewer = make_render_fn(e.scene, e.head.model.cfg.backend)(camera, ViewState(frame=3, color='deformation'))
    torch.testing.assert_close(torch.from_numpy(e.render()), torch.from_numpy(viewer), atol=1, rtol=0)
    assert e.scale == e.scene.deformation_scale


def test_training_panel_draws_the_runs_loss_figure(finished):
    pytest.importorskip('ipywidgets')
    from instag.runs import loss_figure
    from instag.widgets import TrainingPanel
    panel = TrainingPanel(finished, max_points=1000)
    panel.refresh()
    want = loss_figure(finished.history)
    assert [d.name for d in panel.figure.data] == [d.name for d in want.data]
    assert list(panel.figure.data[0].y) == list(want.data[0].y) and panel.figure.layout.yaxis.type == 'log'

"""Hostile options and config values: refused in one line before any work, and a diverging run stops with its last good checkpoint."""
from pathlib import Path

import pytest
import torch

from instag.cli import main
from instag.core import UserError
from instag.example_data import write_example_dataset
from instag.train import Callback, train, train_config

TINY = dict(seconds=0.4, face_iterations=4, mouth_iterations=2, fuse_iterations=1, static_iterations=0,
            synthesizer__face__init_points=60, synthesizer__mouth__init_points=30, checkpoint_every_s=1e9,
            checkpoint_every_steps=3, eval_frames=2, eval_lmd=False, threads=1, data__audio='mel')
TINY_P = [a for k, v in TINY.items() for a in ('-p', f'{k}={v}')]
PRETRAIN_P = ['-p', 'face_iterations=2', '-p', 'mouth_iterations=1', '-p', 'face_static_iterations=0', '-p',
              'mouth_static_iterations=0', '-p', 'synthesizer__face__init_points=40', '-p',
              'synthesizer__mouth__init_points=20', '-p', 'data__audio=mel', '-p', 'threads=1']


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('hostile')
    ds = write_example_dataset(root / 'ds', frames=20, size=40, val_frames=5)
    for k in range(2): write_example_dataset(root / 'corpus' / f'id{k}', frames=16, size=32, val_frames=4)
    return dict(root=root, ds=ds, corpus=root / 'corpus')


def cli(capsys, *args) -> tuple[int, str]:
    "Exit code and the last stderr line of `instag ARGS` run in this process."
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ''


def refused(capsys, cmd: str, *args, says: str) -> None:
    code, line = cli(capsys, cmd, *args)
    assert code == 2 and line.startswith(f'instag {cmd}: error: ') and says in line, (code, line)


class WorkStarted(Exception):
    "Raised by a stubbed first step of a job: the options were not all checked before the work began."


@pytest.fixture
def no_work(monkeypatch):
    "Synthesis (the first step of synth and demo) fails loudly if it is reached."
    import instag.synth.corpus as corpus
    def synthesize(*a, **k): raise WorkStarted()
    monkeypatch.setattr(corpus, 'synthesize', synthesize)


# ---- config values ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('param, says', [('losses__hole_weight=nan', 'not a finite number'),
                                         ('gaussian_lr__means=inf', 'not a finite number'),
                                         ('face_iterations=-5', "'face_iterations': -5 is out of range"),
                                         ('losses__alpha_weight=-1', 'out of range')])
def test_train_refuses_nan_inf_and_negative_values(world, tmp_path, capsys, param, says):
    refused(capsys, 'train', world['ds'], *TINY_P, '-p', param, '--out', tmp_path, '--quiet', says=says)
    assert not (tmp_path / 'train').exists(), 'no run folder for a refused config'


@pytest.mark.parametrize('param', ['contrast_weight=nan', 'face_iterations=-5', 'ema_decay=2'])
def test_pretrain_refuses_nan_and_out_of_range_values(world, tmp_path, capsys, param):
    refused(capsys, 'pretrain', world['corpus'], *PRETRAIN_P, '-p', param, '--out', tmp_path, '--quiet', says='config key')
    assert not (tmp_path / 'pretrain').exists()


def test_a_diverging_run_stops_at_the_first_nan_loss_and_keeps_its_last_checkpoint(world, tmp_path):
    class Diverge(Callback):
        order = 100  # after the checkpoint of face step 3
        def after_step(self, t):
            if t.stage.name == 'face' and t.step == 3:
                self.saved = (t.run_dir / 'checkpoint.pt').read_bytes()
                t.cfg.losses.alpha_weight = float('nan')  # what a learning rate that blows up does to the next loss
    cb = Diverge()
    with pytest.raises(UserError, match=r'training stopped at face step 4: loss/alpha = nan; its last checkpoint') as e:
        train(world['ds'], train_config('cpu', **TINY), run_dir=tmp_path / 'run', verbose=False, callbacks=[cb])
    assert '\n' not in str(e.value)
    assert not (tmp_path / 'run' / 'model.pt').exists(), 'a diverged run must not look finished'
    assert (tmp_path / 'run' / 'checkpoint.pt').read_bytes() == cb.saved


# ---- run folders ------------------------------------------------------------------------------------------------

def test_pretrain_run_dir_holding_the_users_files_is_refused_and_left_alone(world, tmp_path, capsys):
    mine = tmp_path / 'mine'; mine.mkdir()
    files = {'prior.pt': b'my prior', 'config.yaml': b'my: config\n', 'losses.json': b'[1, 2]'}
    for name, data in files.items(): (mine / name).write_bytes(data)
    refused(capsys, 'pretrain', world['corpus'], *PRETRAIN_P, '--run-dir', mine, '--quiet', says='instag did not write')
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == files
    plain = tmp_path / 'plain.txt'; plain.write_text('keep me')
    refused(capsys, 'pretrain', world['corpus'], *PRETRAIN_P, '--run-dir', plain, '--quiet', says='is a file')
    assert plain.read_text() == 'keep me'


def test_train_into_a_foreign_folder_or_a_finished_run_is_refused(world, tmp_path):
    notes = tmp_path / 'notes'; notes.mkdir(); (notes / 'todo.txt').write_text('mine')
    with pytest.raises(UserError, match='instag did not write'):
        train(world['ds'], train_config('cpu', **TINY), run_dir=notes, verbose=False, evaluate=False)
    assert [p.name for p in notes.iterdir()] == ['todo.txt']
    run = tmp_path / 'run'
    train(world['ds'], train_config('cpu', **{**TINY, 'face_iterations': 1, 'mouth_iterations': 1}), run_dir=run,
          verbose=False, evaluate=False)
    before = (run / 'model.pt').read_bytes()
    with pytest.raises(UserError, match='--resume'):
        train(world['ds'], train_config('cpu', **TINY), run_dir=run, verbose=False, evaluate=False)
    assert (run / 'model.pt').read_bytes() == before


# ---- command-line options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('args, says', [(['--size', '63'], '--size 63'), (['--prior', '/missing.pt'], "no prior '/missing.pt'"),
                                        (['--seconds', 'nan'], '--seconds nan'), (['--clip-seconds', 'inf'], '--clip-seconds inf')])
def test_demo_checks_every_option_before_any_work(tmp_path, capsys, no_work, args, says):
    refused(capsys, 'demo', '--out', tmp_path / 'demo', *args, '--quiet', says=says)
    assert not (tmp_path / 'demo').exists()


def test_demo_refuses_an_out_that_is_a_file_or_under_one(tmp_path, capsys, no_work):
    f = tmp_path / 'passwd'; f.write_text('root:x:0:0\n')
    refused(capsys, 'demo', '--out', f, '--quiet', says='is a file')
    refused(capsys, 'demo', '--out', f / 'demo', '--quiet', says='is a file')
    assert f.read_text() == 'root:x:0:0\n'


def test_synth_has_a_clear_limit_on_identities(tmp_path, capsys, no_work):
    refused(capsys, 'synth', '--identities', '100000000', '--out', tmp_path / 's', says='give 1 to 100')


@pytest.mark.parametrize('cmd', ['train', 'adapt'])
@pytest.mark.parametrize('seconds', ['nan', 'inf', '-1'])
def test_train_and_adapt_refuse_seconds_that_are_not_a_duration(world, tmp_path, capsys, cmd, seconds):
    refused(capsys, cmd, world['ds'], '--seconds', seconds, '--out', tmp_path, '--quiet', says=f'--seconds {seconds}')


def test_adapt_help_says_what_seconds_0_means(capsys):
    with pytest.raises(SystemExit): main(['adapt', '--help'])
    assert '0: all of it' in capsys.readouterr().out.replace('\n', ' ').replace('  ', ' ')


def test_pretrain_eval_refuses_a_negative_frame_count(tmp_path, capsys):
    refused(capsys, 'pretrain-eval', tmp_path, '--frames', '-3', says='--frames -3')


# ---- yaml and weights files -------------------------------------------------------------------------------------

def test_yaml_tags_in_a_value_or_a_runs_config_are_refused_in_one_line(world, tmp_path, capsys):
    refused(capsys, 'train', world['ds'], '-p', 'lr=!!python/object/apply:os.system [echo hacked]', '--quiet',
            says='is not plain YAML')
    run = tmp_path / 'run'; run.mkdir()
    (run / 'config.yaml').write_text('seed: !!python/object/apply:os.system [echo hacked]\n')
    (run / 'run.json').write_text('{"job": "train"}')
    refused(capsys, 'train', '--resume', run, '--quiet', says=f'{run / "config.yaml"} is not plain YAML')


def test_a_prior_or_model_with_the_wrong_contents_is_named_in_one_line(world, tmp_path, capsys):
    for i, content in enumerate([{'kind': 'instag-prior', 'format': 1}, {'x': 1}]):
        prior = tmp_path / f'p{i}' / 'prior.pt'; prior.parent.mkdir(); torch.save(content, prior)
        refused(capsys, 'adapt', world['ds'], '--prior', prior, *TINY_P, '--out', tmp_path, '--quiet', says=str(prior))
    run = tmp_path / 'pre'; run.mkdir(); torch.save({'kind': 'pretrain'}, run / 'model.pt')
    refused(capsys, 'pretrain-eval', run, says=f'{run / "model.pt"} is not a complete instag pre-training model')

"""Outputs under stress: an existing file, a read-only or full disk, Ctrl-C, an address the machine lacks, broken Gaussians."""
import errno, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest

from helpers import TINY, tiny_world


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('hostile')
    ds, run = tiny_world(root, {'speech': 1.0, 'blip': 0.006, 'long': 30.0})
    return dict(root=root, ds=ds, run=run, wav=root / 'speech.wav', blip=root / 'blip.wav', long=root / 'long.wav')


def _run(*args, timeout: float = 300, prefix: tuple = (), cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, '-m', 'instag', *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _one_line(r: subprocess.CompletedProcess, says: str, code: int = 2) -> str:
    "The one error line of a refused command (notices before it are allowed), checked for exit code, no traceback, `says`."
    assert r.returncode == code and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-3000:])
    errors = [l for l in r.stderr.splitlines() if l.startswith('instag ') and ': ' in l and not l.startswith('instag: ')]
    assert len(errors) == 1 and says in errors[0], r.stderr[-3000:]
    return errors[0]


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob('*') if '.partial' in p.name or '.tmp' in p.name)


# --- render: an existing file, audio too short to speak -------------------------------------------------------------

def test_render_refuses_to_replace_an_existing_file_without_overwrite(world, tmp_path):
    holiday = tmp_path / 'holiday.mp4'; holiday.write_bytes(b'my holiday video')
    line = _one_line(_run('render', world['run'], '--audio', world['wav'], '--out', holiday), '--overwrite')
    assert 'holiday.mp4 already exists' in line and holiday.read_bytes() == b'my holiday video'
    r = _run('render', world['run'], '--audio', world['wav'], '--out', holiday, '--overwrite', '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    assert holiday.read_bytes()[4:8] == b'ftyp' and _partials(tmp_path) == []


def test_render_refuses_audio_shorter_than_one_frame(world, tmp_path):
    line = _one_line(_run('render', world['run'], '--audio', world['blip'], '--out', tmp_path / 'blip.mp4'), 'one video frame')
    assert '6 ms' in line and list(tmp_path.iterdir()) == []


# --- view: an address this machine lacks, nonsense durations and identities ------------------------------------------

def test_view_refuses_an_address_this_machine_does_not_have(world):
    try: r = _run('view', 'toy', '--host', '203.0.113.7', '--port', '0', timeout=60)  # TEST-NET-3: never a local address
    except subprocess.TimeoutExpired: pytest.fail('instag view --host 203.0.113.7 hangs instead of refusing')
    _one_line(r, '--host 203.0.113.7')


@pytest.mark.parametrize('args, says', [(['--seconds', '-2'], '--seconds'), (['--seconds', 'nan'], '--seconds'),
                                        (['--identity', '-3', '--seconds', '0.2'], '--identity')])
def test_view_refuses_negative_seconds_and_identity(args, says):
    from instag.core import UserError
    from instag.view.scenes import main_view
    with pytest.raises(UserError, match=says): main_view(['toy', '--port', '0', *args])


# --- a read-only output folder: one line, no traceback, for every job that writes -------------------------------------

def _unprivileged() -> tuple:
    "A command prefix under which a 0o555 folder refuses writes: none for a normal user; for root, without CAP_DAC_OVERRIDE."
    if os.geteuid() != 0: return ()
    prefix = ('setpriv', '--bounding-set=-dac_override,-dac_read_search')
    if shutil.which('setpriv') is None: pytest.skip('running as root without setpriv: chmod 0o555 does not bind root')
    probe = Path(os.environ.get('TMPDIR', '/tmp')) / f'instag-ro-probe-{os.getpid()}'
    probe.mkdir(); probe.chmod(0o555)
    try:
        r = subprocess.run([*prefix, 'touch', str(probe / 'x')], capture_output=True)
        if r.returncode == 0: pytest.skip('setpriv cannot drop CAP_DAC_OVERRIDE here: chmod 0o555 does not bind root')
    finally: probe.chmod(0o755); shutil.rmtree(probe)
    return prefix


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / 'read_only'; folder.mkdir(); folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


READ_ONLY = {
    'synth': lambda w, ro: ['synth', '--out', ro / 'corpus', '--identities', '1', '--seconds', '1', '--size', '48'],
    'train': lambda w, ro: ['train', w['ds'], '--out', ro, '--seconds', '0.4'],
    'adapt': lambda w, ro: ['adapt', w['ds'], '--out', ro, '--seconds', '0.4', '-p', 'data__audio=mel'],
    'pretrain': lambda w, ro: ['pretrain', w['corpus'], '--out', ro],
    'evaluate': lambda w, ro: ['evaluate', ro],
    'runs': lambda w, ro: ['runs', ro],
}


@pytest.mark.parametrize('job', sorted(READ_ONLY))
def test_a_read_only_output_folder_is_one_line(world, read_only, job):
    prefix = _unprivileged()
    if job in ('evaluate', 'runs'):  # a finished run inside the read-only folder: evaluate writes beside it, runs its index
        read_only.chmod(0o755)
        dest = read_only / 'train' / 'run' if job == 'runs' else read_only
        shutil.copytree(world['run'], dest, dirs_exist_ok=True)
        read_only.chmod(0o555); dest.chmod(0o555)
    if job == 'pretrain':
        world['corpus'] = read_only.parent / 'corpus'
        for name in ('a', 'b'): shutil.copytree(world['ds'], world['corpus'] / name, dirs_exist_ok=True)
    before = sorted(p.name for p in read_only.rglob('*'))
    r = _run(*READ_ONLY[job](world, read_only), prefix=prefix, cwd=read_only)
    line = _one_line(r, 'cannot write')
    assert str(read_only) in line and 'ermission denied' in line, line
    assert sorted(p.name for p in read_only.rglob('*')) == before


# --- a full disk (simulated: the writer's OSError as the kernel gives it, without a file name) -------------------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')


def test_a_full_disk_during_render_is_one_line_and_leaves_no_partial_video(world, tmp_path, monkeypatch, capsys):
    from instag.cli import main
    from instag.video import Mp4Writer
    monkeypatch.setattr(Mp4Writer, '_audio_frame', _no_space)
    out = tmp_path / 'talk.mp4'
    assert main(['render', str(world['run']), '--audio', str(world['wav']), '--out', str(out), '--quiet']) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('instag render: error: cannot write') and str(out) in err and 'no space left' in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('job', ['synth', 'train'])
def test_a_full_disk_during_a_job_is_one_line_and_leaves_no_temporary(world, tmp_path, monkeypatch, capsys, job):
    from instag.cli import main
    monkeypatch.setattr(os, 'fsync', _no_space)  # every atomic write (npz, json, checkpoints) fsyncs before its rename
    out = tmp_path / 'out'
    args = (['synth', '--out', str(out), '--identities', '1', '--seconds', '1', '--size', '48', '--no-video'] if job == 'synth'
            else ['train', str(world['ds']), '--out', str(out), '--seconds', '0.4', '--quiet',
                  *sum((['-p', f'{k}={v}'] for k, v in TINY.items() if k != 'seconds'), [])])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f'instag {job}: error: cannot write') and str(out) in err and 'no space left' in err, err
    assert _partials(tmp_path) == []


# --- Ctrl-C during a render ------------------------------------------------------------------------------------------

def test_ctrl_c_during_render_says_what_was_kept_and_removes_the_partial_video(world, tmp_path):
    out = tmp_path / 'talk.mp4'; out.write_bytes(b'an earlier render')
    p = subprocess.Popen([sys.executable, '-m', 'instag', 'render', str(world['run']), '--audio', str(world['long']),
                          '--out', str(out), '--overwrite', '--quiet'], stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial, t0 = tmp_path / '.talk.partial.mp4', time.time()
    while not partial.exists() and p.poll() is None and time.time() - t0 < 120: time.sleep(0.05)
    time.sleep(0.3); p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert p.returncode == 130 and 'Traceback' not in err, err[-3000:]
    assert last.startswith('instag render: stopped by Ctrl-C at frame') and 'is kept as it was' in last, last
    assert 'run the same command again' in last
    assert out.read_bytes() == b'an earlier render' and _partials(tmp_path) == []


def test_a_bare_ctrl_c_names_what_stopped(monkeypatch, capsys):
    import instag.cli as cli
    def interrupted(argv): raise KeyboardInterrupt
    monkeypatch.setattr(cli, '_resolve', lambda name: interrupted)
    assert cli.main(['synth']) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith('instag synth: stopped by Ctrl-C') and 'run the same command again' in err, err


# --- the library's render: one answer on every backend -----------------------------------------------------------------

def _backends() -> list[str]:
    from instag._render_cpu import cpu_backend_available
    return ['torch'] + (['cpu'] if cpu_backend_available() else [])


@pytest.mark.parametrize('field', ['means', 'quats', 'scales', 'opacities', 'sh0', 'shN'])
def test_render_refuses_non_finite_gaussians_on_every_backend(field):
    from instag.camera import Camera
    from instag.render import head_gaussians, render
    g = head_gaussians(200, sh_degree=1); cam = Camera.orbit(0.6, size=32)
    g[field] = g[field].clone(); g[field].view(-1)[7] = float('nan')
    for backend in _backends():
        with pytest.raises(ValueError, match=rf"gaussians\['{field}'\] holds NaN"):
            render(g, cam.viewmat, cam.K, 32, 32, backend=backend)


@pytest.mark.parametrize('change, says', [
    (lambda g, v, K: (dict(g, opacities=g['opacities'][:, None]), v, K), r"gaussians\['opacities'\] must be \[N\] with N = 200"),
    (lambda g, v, K: (dict(g, means=g['means'][:, :2]), v, K), r"gaussians\['means'\] must be \[N,3\]"),
    (lambda g, v, K: ({k: t for k, t in g.items() if k != 'quats'}, v, K), "gaussians has no 'quats'"),
    (lambda g, v, K: (g, v[:3], K), r'viewmat must be \[4,4\]'),
    (lambda g, v, K: (g, v, K[None]), r'K must be \[3,3\]'),
])
def test_render_names_the_argument_and_its_shape(change, says):
    from instag.camera import Camera
    from instag.render import head_gaussians, render
    g = head_gaussians(200, sh_degree=1); cam = Camera.orbit(0.6, size=32)
    g, viewmat, K = change(g, cam.viewmat, cam.K)
    for backend in _backends():
        with pytest.raises(ValueError, match=says): render(g, viewmat, K, 32, 32, backend=backend)


def test_render_input_check_is_cheap():
    "Regression guard: the check stays a small fraction of a render (it runs every training step)."
    from instag.camera import Camera
    from instag.render import check_render_inputs, head_gaussians, render
    g = head_gaussians(20_000, sh_degree=2); cam = Camera.orbit(0.6, size=128)
    check_render_inputs(g, cam.viewmat, cam.K, 128, 128)
    t = time.perf_counter()
    for _ in range(20): check_render_inputs(g, cam.viewmat, cam.K, 128, 128)
    check_s = (time.perf_counter() - t) / 20
    t = time.perf_counter(); render(g, cam.viewmat, cam.K, 128, 128); render_s = time.perf_counter() - t
    assert check_s < 0.05 * render_s, (check_s, render_s)

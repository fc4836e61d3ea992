"""`instag export` (a head as a 3DGS PLY, its Gaussians per frame of an audio file) and `instag render --orbit`: the file
read back by an independent reader (plyfile) holds the model's numbers and renders the model's image, known answers on
hand-made Gaussians, the per-frame arrays reproduce the deformation, and every user mistake is one line."""
import json, struct
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_world

plyfile = pytest.importorskip('plyfile', reason='plyfile reads the PLY back: pip install plyfile (a dev requirement)')

from instag.cli import main  # noqa: E402
from instag.export import (CANONICAL_PLY, FRAMES_JSON, FRAMES_NPZ, canonical_branches, from_vertices, ply_branches,  # noqa: E402
                           ply_bytes, ply_properties, split_branches, to_vertices)
from instag.inference import load_run, video_frames_for  # noqa: E402
from instag.talking_head import BRANCHES, render_frame  # noqa: E402

# the PLY holds the model's float32 numbers unchanged and instag renders them with the same code on the same machine:
# the images must agree bit for bit
RENDER_TOLERANCE = 0.0


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('export')
    ds, run = tiny_world(root, {'speech': 1.0, 'blip': 0.006})
    from instag.audio import write_wav
    write_wav(root / 'silent.wav', np.zeros(16000, np.float32))
    (root / 'empty.wav').write_bytes(b'')
    (root / 'noise.wav').write_bytes(b'RIFF this is not a wave file at all')
    return dict(root=root, ds=ds, run=run, wav=root / 'speech.wav')


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(capsys, says: str, *args) -> str:
    "The command is refused with exit code 2 and one error line (notices before it allowed) that contains `says`."
    code, _, err = _cli(capsys, *args)
    assert code == 2 and 'Traceback' not in err, (code, err[-2000:])
    errors = [l for l in err.splitlines() if l.startswith(f'instag {args[0]}: error: ')]
    assert len(errors) == 1 and says in errors[0], err[-2000:]
    return errors[0]


# --- the canonical PLY ---------------------------------------------------------------------------------------------------

def test_ply_round_trip_with_plyfile(world, tmp_path, capsys):
    path = tmp_path / 'head.ply'
    code, out, err = _cli(capsys, 'export', world['run'], '--ply', path)
    assert code == 0, err
    assert 'head.ply: 90 Gaussians (face 60, mouth 30), canonical, SH degree 1' in out
    ply = plyfile.PlyData.read(str(path))
    assert ply.header.splitlines()[1] == 'format binary_little_endian 1.0'
    vertex = ply['vertex']
    head = load_run(world['run'])
    model = head.model
    assert vertex.count == sum(model.num_gaussians().values()) == 90
    assert [p.name for p in vertex.properties] == ply_properties(3)
    assert all(vertex.data.dtype[p.name] == np.dtype('<f4') for p in vertex.properties)
    ranges = ply_branches(ply.comments)
    assert ranges == {'face': (0, 60), 'mouth': (60, 30)}
    for b, (start, count) in ranges.items():
        g = {k: v.detach().numpy() for k, v in model.branch(b).gaussians.items()}
        rows = vertex.data[start:start + count]
        column = lambda *names: np.stack([rows[n] for n in names], -1)
        assert np.array_equal(column('x', 'y', 'z'), g['means'])
        assert np.array_equal(column('nx', 'ny', 'nz'), np.zeros((count, 3), np.float32))
        assert np.array_equal(column('f_dc_0', 'f_dc_1', 'f_dc_2'), g['sh0'][:, 0])
        rest = column(*(f'f_rest_{i}' for i in range(9)))
        assert np.array_equal(rest, g['shN'].transpose(0, 2, 1).reshape(count, 9))  # channel-major: R's 3, G's 3, B's 3
        assert np.array_equal(rows['opacity'], g['opacities'])
        assert np.array_equal(column('scale_0', 'scale_1', 'scale_2'), g['scales'])
        assert np.array_equal(column('rot_0', 'rot_1', 'rot_2', 'rot_3'), g['quats'])  # wxyz, as 3DGS stores them
    # the Gaussians read back render the model's own canonical frame
    back = split_branches(from_vertices(vertex.data), ranges)
    degrees = {b: model.branch(b).cfg.sh_degree for b in BRANCHES}
    for k in (0, 3):
        frame = head.frame(k)
        own = model.render(model.deform(None, static=True), frame.camera, frame.background)
        again = render_frame(back, frame.camera, frame.background, degrees, model.cfg.backend)
        assert (own.rgb - frame.background).abs().max() > 0.05  # the head is in the picture
        torch.testing.assert_close(again.rgb, own.rgb, atol=RENDER_TOLERANCE, rtol=0)
        torch.testing.assert_close(again.layers['mouth'][1], own.layers['mouth'][1], atol=RENDER_TOLERANCE, rtol=0)


def test_ply_padded_to_sh_degree_3(world, tmp_path, capsys):
    path = tmp_path / 'deg3.ply'
    code, _, err = _cli(capsys, 'export', world['run'], '--ply', path, '--sh-degree', '3')
    assert code == 0, err
    vertex = plyfile.PlyData.read(str(path))['vertex']
    assert [p.name for p in vertex.properties] == ply_properties(15) and len(vertex.properties) == 62
    shN = canonical_branches(load_run(world['run']).model)['face']['shN'].numpy()  # [60, 3, 3]
    rest = np.stack([vertex.data[f'f_rest_{i}'] for i in range(45)], -1)[:60].reshape(60, 3, 15)  # [N, channel, coefficient]
    assert np.array_equal(rest[:, :, :3], shN.transpose(0, 2, 1)) and not rest[:, :, 3:].any()


def test_ply_of_one_loop_frame(world, tmp_path, capsys):
    path = tmp_path / 'frame2.ply'
    code, out, err = _cli(capsys, 'export', world['run'], '--ply', path, '--frame', '2')
    assert code == 0, err
    assert 'loop frame 2' in out
    ply = plyfile.PlyData.read(str(path))
    assert ply.comments[0].startswith('instag loop frame 2 (training frame ')
    head = load_run(world['run'])
    deformed, read = head.deform(2), from_vertices(ply['vertex'].data)
    for name in ('means', 'scales', 'quats', 'opacities', 'sh0'):
        expected = np.concatenate([deformed.gaussians[b][name].detach().numpy() for b in BRANCHES])
        assert np.array_equal(read[name].numpy(), expected), name
    canonical = np.concatenate([head.model.branch(b).gaussians['means'].detach().numpy() for b in BRANCHES])
    assert not np.array_equal(read['means'].numpy(), canonical)


# --- known answers: two hand-made Gaussians -------------------------------------------------------------------------------

TWO = dict(means=torch.tensor([[1.0, 2.0, 3.0], [-0.5, 0.25, 0.125]]),
           quats=torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.5, 0.5]]),
           scales=torch.tensor([[-1.0, -2.0, -3.0], [0.0, 0.5, 1.0]]),
           opacities=torch.tensor([0.0, 2.0]),
           sh0=torch.tensor([[[0.1, 0.2, 0.3]], [[-1.0, 0.0, 1.0]]]),
           shN=torch.tensor([[[100.0 * n + 10 * k + c for c in range(3)] for k in range(3)] for n in range(2)]))


def test_two_gaussians_known_bytes(tmp_path):
    data = ply_bytes(to_vertices(TWO), ['two'])
    names = ['x', 'y', 'z', 'nx', 'ny', 'nz', 'f_dc_0', 'f_dc_1', 'f_dc_2', *(f'f_rest_{i}' for i in range(9)), 'opacity',
             'scale_0', 'scale_1', 'scale_2', 'rot_0', 'rot_1', 'rot_2', 'rot_3']
    header = ('ply\nformat binary_little_endian 1.0\ncomment two\nelement vertex 2\n'
              + ''.join(f'property float {n}\n' for n in names) + 'end_header\n').encode()
    # shN[n, k, c] = 100 n + 10 k + c; 3DGS writes f_rest_{c K + k} = shN[n, k, c]
    rows = [[1, 2, 3, 0, 0, 0, 0.1, 0.2, 0.3, 0, 10, 20, 1, 11, 21, 2, 12, 22, 0, -1, -2, -3, 1, 0, 0, 0],
            [-0.5, 0.25, 0.125, 0, 0, 0, -1, 0, 1, 100, 110, 120, 101, 111, 121, 102, 112, 122, 2, 0, 0.5, 1, 0.5, -0.5, 0.5, 0.5]]
    assert data == header + b''.join(struct.pack('<26f', *r) for r in rows)
    (tmp_path / 'two.ply').write_bytes(data)
    ply = plyfile.PlyData.read(str(tmp_path / 'two.ply'))
    assert ply.comments == ['two'] and ply['vertex'].count == 2
    assert [float(ply['vertex'][f'f_rest_{i}'][1]) for i in range(9)] == [100, 110, 120, 101, 111, 121, 102, 112, 122]
    back = from_vertices(ply['vertex'].data)
    for k, v in TWO.items(): assert torch.equal(back[k], v), k


def test_f_rest_order_against_a_known_layout():
    "Channel-major, as 3DGS's save_ply flattens features_rest [N, K, 3] transposed to [N, 3, K]."
    shN = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2, 8, 3)  # degree 2
    g = dict(TWO, shN=shN)
    v = to_vertices(g)
    got = np.stack([v[f'f_rest_{i}'] for i in range(24)], -1)
    assert np.array_equal(got, shN.transpose(1, 2).reshape(2, 24).numpy())
    assert float(v[0]['f_rest_1']) == float(shN[0, 1, 0]) and float(v[0]['f_rest_8']) == float(shN[0, 0, 1])
    padded = to_vertices(dict(TWO, shN=shN[:, :3]), K=8)  # degree 1 written as degree 2: zeros after each channel's 3
    row = np.array([padded[0][f'f_rest_{i}'] for i in range(24)])
    assert np.array_equal(row.reshape(3, 8)[:, :3], shN[0, :3].T.numpy()) and not row.reshape(3, 8)[:, 3:].any()


# --- per-frame arrays --------------------------------------------------------------------------------------------------

def test_frames_reproduce_the_deformation(world, tmp_path, capsys):
    out = tmp_path / 'speech'
    code, stdout, err = _cli(capsys, 'export', world['run'], '--frames', world['wav'], '--out', out, '--quiet')
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted([CANONICAL_PLY, FRAMES_JSON, FRAMES_NPZ])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []
    info = json.loads((out / FRAMES_JSON).read_text())
    head = load_run(world['run'])
    T = video_frames_for(16000, 25)
    assert (info['fps'], info['frames'], info['gaussians']) == (25, T, 90) and T == 32
    assert info['audio'] == str(world['wav'].resolve())
    assert info['branches'] == {'face': dict(start=0, count=60, sh_degree=1), 'mouth': dict(start=60, count=30, sh_degree=1)}
    arrays = np.load(out / FRAMES_NPZ)
    assert sorted(arrays.files) == ['loop_frames', 'means', 'quats', 'scales', 'viewmats']
    assert info['arrays']['means']['shape'] == [T, 90, 3] and info['arrays']['quats']['dtype'] == 'float32'
    from instag.audio import load_audio
    features = head.features(load_audio(world['wav']), frames=T)
    for k in (0, 7, T - 1):
        d = head.deform(k, features)
        for name in ('means', 'scales', 'quats'):
            expected = np.concatenate([d.gaussians[b][name].detach().numpy() for b in BRANCHES])
            assert np.array_equal(arrays[name][k], expected), (k, name)
        assert np.array_equal(arrays['viewmats'][k], head.frame(k).camera.viewmat.numpy())
        assert arrays['loop_frames'][k] == head.frame(k).index
    assert not np.array_equal(arrays['means'][0], arrays['means'][T - 1])  # the audio moves the head
    canonical = plyfile.PlyData.read(str(out / CANONICAL_PLY))['vertex']
    assert canonical.count == 90
    # float16 halves the arrays and stays close
    code, _, err = _cli(capsys, 'export', world['run'], '--frames', world['wav'], '--out', tmp_path / 'half', '--dtype', 'float16', '--quiet')
    assert code == 0, err
    half = np.load(tmp_path / 'half' / FRAMES_NPZ)
    assert half['means'].dtype == np.float16
    np.testing.assert_allclose(half['means'].astype(np.float32), arrays['means'], atol=1e-3)


def test_frames_overwrite_replaces_only_an_earlier_export(world, tmp_path, capsys):
    out = tmp_path / 'again'
    assert _cli(capsys, 'export', world['run'], '--frames', world['wav'], '--out', out, '--quiet')[0] == 0
    before = (out / FRAMES_NPZ).read_bytes()
    _one_line(capsys, 'already holds an export: pass --overwrite', 'export', world['run'], '--frames', world['wav'], '--out', out)
    code, _, err = _cli(capsys, 'export', world['run'], '--frames', world['wav'], '--out', out, '--overwrite', '--max-seconds', '0.5', '--quiet')
    assert code == 0, err
    assert json.loads((out / FRAMES_JSON).read_text())['frames'] == 16 and (out / FRAMES_NPZ).read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ['again']  # no partial or old folder left beside it


def test_frames_ctrl_c_keeps_the_earlier_export(world, tmp_path, capsys, monkeypatch):
    import instag.export
    out = tmp_path / 'kept'
    assert _cli(capsys, 'export', world['run'], '--frames', world['wav'], '--out', out, '--quiet')[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    def interrupted(*args, **kwargs): raise KeyboardInterrupt
    monkeypatch.setattr(instag.export, 'deformed_frames', interrupted)
    code, _, err = _cli(capsys, 'export', world['run'], '--frames', world['wav'], '--out', out, '--overwrite', '--quiet')
    assert code == 130 and 'is kept as it was' in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ['kept']


# --- the orbit ---------------------------------------------------------------------------------------------------------

def test_orbit_mp4(world, tmp_path, capsys):
    import av
    out = tmp_path / 'orbit.mp4'
    code, stdout, err = _cli(capsys, 'render', world['run'], '--orbit', '--frame', '3', '--orbit-frames', '7',
                             '--orbit-degrees', '40', '--out', out, '--quiet')
    assert code == 0, err
    assert 'orbit of loop frame 3' in stdout and '7 frames over -40 to 40 degrees' in stdout
    with av.open(str(out)) as f:
        assert not f.streams.audio
        images = [x.to_ndarray(format='rgb24').astype(int) for x in f.decode(video=0)]
    assert len(images) == 7 and images[0].shape == (48, 48, 3)
    assert np.abs(images[0] - images[-1]).mean() > 1  # the camera moved
    assert np.abs(images[0] - images[-1]).mean() > np.abs(images[2] - images[4]).mean()  # the farther apart, the more it changed
    assert (images[0][0, 0] > 200).all()  # over white, not the torso picture
    code, _, err = _cli(capsys, 'render', world['run'], '--orbit', '--quiet')  # the defaults: frame 0, 50 frames
    assert code == 0, err
    with av.open(str(world['run'] / 'orbit-0.mp4')) as f: assert sum(1 for _ in f.decode(video=0)) == 50


# --- one line for each mistake -------------------------------------------------------------------------------------------

CASES = {
    'missing run': (lambda w, t: ['export', w['root'] / 'no-run', '--ply', t / 'x.ply'], 'model.pt is missing'),
    'ply not .ply': (lambda w, t: ['export', w['run'], '--ply', t / 'x.obj'], 'ending in .ply'),
    'ply not writable': (lambda w, t: ['export', w['run'], '--ply', '/proc/instag-head.ply'], 'cannot write'),
    'ply is a folder': (lambda w, t: ['export', w['run'], '--ply', t], 'is a folder'),
    'neither ply nor frames': (lambda w, t: ['export', w['run']], 'give one of --ply'),
    'both ply and frames': (lambda w, t: ['export', w['run'], '--ply', t / 'x.ply', '--frames', w['wav']], 'give one of --ply'),
    'out with ply': (lambda w, t: ['export', w['run'], '--ply', t / 'x.ply', '--out', t / 'd'], 'go with --frames'),
    'sh degree 7': (lambda w, t: ['export', w['run'], '--ply', t / 'x.ply', '--sh-degree', '7'], '--sh-degree 7'),
    'sh degree below the head': (lambda w, t: ['export', w['run'], '--ply', t / 'x.ply', '--sh-degree', '0'], 'would drop colours'),
    'frames audio too short': (lambda w, t: ['export', w['run'], '--frames', w['root'] / 'blip.wav', '--out', t / 'd'], 'one video frame'),
    'frames audio silent': (lambda w, t: ['export', w['run'], '--frames', w['root'] / 'silent.wav', '--out', t / 'd'], 'is silent'),
    'frames audio 0 bytes': (lambda w, t: ['export', w['run'], '--frames', w['root'] / 'empty.wav', '--out', t / 'd'], 'is empty'),
    'frames audio not audio': (lambda w, t: ['export', w['run'], '--frames', w['root'] / 'noise.wav', '--out', t / 'd'], 'cannot read audio'),
    'frames audio missing': (lambda w, t: ['export', w['run'], '--frames', w['root'] / 'nope.wav', '--out', t / 'd'], 'does not exist'),
    'frames missing run': (lambda w, t: ['export', w['root'] / 'no-run', '--frames', w['wav'], '--out', t / 'd'], 'model.pt is missing'),
    'frames out not writable': (lambda w, t: ['export', w['run'], '--frames', w['wav'], '--out', '/proc/instag-frames'], 'cannot write'),
    'frame with frames': (lambda w, t: ['export', w['run'], '--frames', w['wav'], '--out', t / 'd', '--frame', '1'], 'goes with --ply'),
    'ply frame past the loop': (lambda w, t: ['export', w['run'], '--ply', t / 'x.ply', '--frame', '10'], 'loops over 10'),
    'frames max seconds nan': (lambda w, t: ['export', w['run'], '--frames', w['wav'], '--out', t / 'd', '--max-seconds', 'nan'], '--max-seconds'),
    'orbit with audio': (lambda w, t: ['render', w['run'], '--orbit', '--audio', w['wav'], '--out', t / 'o.mp4'], 'leave out --audio'),
    'orbit frame past the loop': (lambda w, t: ['render', w['run'], '--orbit', '--frame', '99', '--out', t / 'o.mp4'], 'loops over 10'),
    'orbit degrees 0': (lambda w, t: ['render', w['run'], '--orbit', '--orbit-degrees', '0', '--out', t / 'o.mp4'], '--orbit-degrees 0'),
    'frame without orbit': (lambda w, t: ['render', w['run'], '--frame', '2', '--out', t / 'o.mp4'], 'goes with --orbit'),
    'render without audio or orbit': (lambda w, t: ['render', w['run'], '--out', t / 'o.mp4'], 'no --audio'),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_one_line_and_exit_2(world, tmp_path, capsys, case):
    make, says = CASES[case]
    _one_line(capsys, says, *make(world, tmp_path))
    assert not (tmp_path / 'x.ply').exists() and not (tmp_path / 'd').exists() and not (tmp_path / 'o.mp4').exists()


def test_existing_outputs_are_kept_without_overwrite(world, tmp_path, capsys):
    mine = tmp_path / 'mine.ply'
    mine.write_bytes(b'my own scan')
    line = _one_line(capsys, '--overwrite', 'export', world['run'], '--ply', mine)
    assert 'mine.ply already exists' in line and mine.read_bytes() == b'my own scan'
    notes = tmp_path / 'notes'
    notes.mkdir()
    (notes / 'todo.txt').write_text('keep me')
    _one_line(capsys, 'not an instag export', 'export', world['run'], '--frames', world['wav'], '--out', notes, '--overwrite')
    assert [p.name for p in notes.iterdir()] == ['todo.txt']
    _one_line(capsys, 'is a file', 'export', world['run'], '--frames', world['wav'], '--out', mine)
    code, _, err = _cli(capsys, 'export', world['run'], '--ply', mine, '--overwrite')
    assert code == 0, err
    assert plyfile.PlyData.read(str(mine))['vertex'].count == 90
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine.ply', 'notes']

"""`torchrun --nproc_per_node 2 -m instag pretrain`: two processes on loopback (gloo), tiny data."""
import os, subprocess, sys
from pathlib import Path

import pytest
import torch

from instag.example_data import write_example_dataset
from instag.prior import load_prior


def test_two_processes_keep_one_universal_field_and_write_a_prior(tmp_path):
    corpus = tmp_path / 'corpus'
    for k in range(4): write_example_dataset(corpus / f'id{k}', frames=16, size=32, val_frames=4)
    run = tmp_path / 'run'
    params = dict(face_iterations=8, mouth_iterations=6, face_static_iterations=2, mouth_static_iterations=1,
                  synthesizer__face__init_points=60, synthesizer__mouth__init_points=30, negatives=0, data__audio='mel',
                  threads=1, densify__refine_start=2, densify__refine_every=2, densify__refine_stop=1,
                  densify__grad_threshold=1e-7, mouth_grad_threshold=1e-7)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'instag',
           'pretrain', str(corpus), '--run-dir', str(run), '--quiet']
    for k, v in params.items(): cmd += ['-p', f'{k}={v}']
    env = dict(os.environ, GLOO_SOCKET_IFNAME='lo', OMP_NUM_THREADS='1')
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a = torch.load(run / 'universal.pt', weights_only=True)
    b = torch.load(run / 'rank1' / 'universal.pt', weights_only=True)
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)          # bit-identical on both ranks
    start = torch.load(run / 'checkpoint.pt', weights_only=True)                          # and it did train
    prior = load_prior(run)
    assert [c['name'] for c in prior['corpus']] == ['id0', 'id1', 'id2', 'id3']
    for k, v in prior['universal']['face'].items(): torch.testing.assert_close(v, a[f'face.{k}'], rtol=0, atol=0)
    # each rank trained its own identities: rank 1's heads (1, 3) reached rank 0's model.pt
    model = torch.load(run / 'model.pt', weights_only=True)['model']
    assert model['heads.1.face.gaussians.means'].shape[0] != 60 or model['heads.3.face.gaussians.means'].shape[0] != 60
    assert (run / 'rank1' / 'checkpoint.pt').exists() and start['stage_index'] == 1

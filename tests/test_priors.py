"""The priors that ship inside the package: they load, hold only universal fields, have model cards, are listed."""
import json, subprocess, sys

import pytest
import torch

from instag.core import UserError
from instag.prior import SHIPPED_DIR, check_prior, load_prior, prior_fields

SHIPPED = ('synthetic', 'real', 'real-logmel')
HEARS = {'synthetic': 'log-mel', 'real': 'whisper', 'real-logmel': 'log-mel'}  # the audio features each was pre-trained on
MAX_MB = 5.0


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_prior_loads_and_holds_only_universal_fields(name):
    path = SHIPPED_DIR / f'{name}.pt'
    assert path.exists(), f'{path} is missing: build it with tools/build_prior.py {name}'
    assert path.stat().st_size < MAX_MB * 2**20
    p = load_prior(name)
    assert set(p['universal']) == set(p['universal_ema']) == {'face', 'mouth'}
    assert not any('gaussians' in k or 'personal' in k for b in p['universal'].values() for k in b)  # no appearance
    fields = prior_fields(p)
    assert fields['face'].cfg.audio_in_dim == p['audio']['dim'] and p['audio']['kind'] == HEARS[name]
    if HEARS[name] == 'log-mel': check_prior(p, 'aud.wav (log-mel, computed)', p['audio']['dim'])
    else:  # a speech encoder's: the prior names the pinned weights and the window, and refuses features made otherwise
        from instag.prepare.speech_encoder import DEFAULT_ENCODER, ENCODERS, WHISPER_CONTEXT_S
        enc = p['audio']['encoder']
        assert enc['sha256'] == ENCODERS[DEFAULT_ENCODER].sha256 and enc['context_s'] == WHISPER_CONTEXT_S
        check_prior(p, 'aud_whisper.npy (whisper)', p['audio']['dim'], encoder=dict(enc))
        with pytest.raises(UserError, match='made otherwise'):
            check_prior(p, 'aud_whisper.npy (whisper)', p['audio']['dim'], encoder=dict(enc, context_s=30.0))
        with pytest.raises(UserError, match='pre-trained on whisper'): check_prior(p, 'aud.wav (log-mel, computed)', 80)
    assert len(p['corpus']) >= 6 and all(c['hash'] for c in p['corpus'])
    assert not any('german' in c['name'] or 'videoretalking' in c['name'] for c in p['corpus'])
    card = path.with_suffix('.md').read_text()
    assert 'tools/build_prior.py' in card and all(c['name'] in card for c in p['corpus'])
    k = 'deform_net.layers.0.weight'  # the EMA kept during pre-training differs from the raw weights
    assert not torch.equal(p['universal']['face'][k], p['universal_ema']['face'][k])


def test_instag_priors_lists_the_shipped_ones(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'instag', 'priors', '--json', '--root', str(tmp_path)], capture_output=True,
                       text=True, check=True)
    rows = {row['name']: row for row in map(json.loads, r.stdout.splitlines())}
    for name in SHIPPED:
        assert rows[name]['shipped'] and rows[name]['identities'] >= 6 and rows[name]['size_mb'] < MAX_MB


def test_the_real_prior_card_names_every_clip_its_license_and_the_encoder():
    "Sources and licenses come from the corpus table (CC BY rows with their attribution); the encoder with its hash."
    p = load_prior('real')
    card = (SHIPPED_DIR / 'real.md').read_text()
    rows = [l for l in card.splitlines() if any(l.startswith(f'| {c["name"]} | {c["seconds"]} | {c["hash"]} |') for c in p['corpus'])]
    assert len(rows) == len(p['corpus']) >= 30 and all('(' in r and 'not in the corpus table' not in r for r in rows)
    assert 'CC-BY-4.0' in card and 'Attribution' in card and 'VoxCeleb2' in card and 'GRID corpus' in card
    assert p['audio']['encoder']['sha256'] in card and 'MIT' in card
    assert 'pcavs_681100216' not in {c['name'] for c in p['corpus']}  # kept out: an adaptation target of the evaluation


def test_a_prior_is_read_once_while_its_file_is_unchanged(tmp_path, monkeypatch):
    "Adaptation asks for its prior three times (audio choice, config check, weights): one read, until the file changes."
    import shutil
    from instag import prior as prior_module
    path = tmp_path / 'prior.pt'
    shutil.copy(SHIPPED_DIR / 'synthetic.pt', path)
    reads = []
    real_load = prior_module.load_torch
    monkeypatch.setattr(prior_module, 'load_torch', lambda p, what: reads.append(p) or real_load(p, what))
    a, b = load_prior(path), load_prior(path)
    assert len(reads) == 1 and a is not b and a['path'] == b['path'] == str(path)
    a['extra'] = 1  # a caller's key does not reach the next caller
    assert 'extra' not in load_prior(path) and len(reads) == 1
    data = torch.load(path, weights_only=True)
    data['corpus'] = data['corpus'] + [{'name': 'one more'}]
    torch.save(data, path)  # a changed file (new size) is read again
    assert load_prior(path)['corpus'][-1] == {'name': 'one more'} and len(reads) == 2

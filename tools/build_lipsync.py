"""Fit the audio -> lip-gap regressor of the lip-sync score on the prepared real corpus; write it and its model card.

Usage: .venv/bin/python tools/build_lipsync.py [CORPUS_DIR]   (default data/corpus_real, made by
  instag prepare-corpus ../shared/data/corpus/corpus.csv --out data/corpus_real --size 128)
Writes instag/priors/lipsync.npz (plain arrays) and instag/priors/lipsync.md. The corpus holds none of the adaptation
targets (the German presenter, the video-retalking clips), so the score never saw a test person.
"""
import json, sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from instag.audio import SAMPLE_RATE, load_audio, log_mel_windows  # noqa: E402
from instag.lipsync import LIPSYNC_FILE, fit_lipsync, save_lipsync, standardize, sync_score  # noqa: E402
from instag.runs import git_commit  # noqa: E402

RIDGE = 0.1


def clip(ds: Path):
    meta = json.loads((ds / 'metadata.json').read_text())
    gap = np.load(ds / 'instag' / 'mouth_open.npy').astype(np.float64)
    mel = log_mel_windows(load_audio(ds / 'aud.wav'), SAMPLE_RATE, meta['fps'], len(gap))
    return mel, gap, meta['fps']


def main(argv=None) -> int:
    corpus = Path((argv or sys.argv[1:] or [ROOT / 'data' / 'corpus_real'])[0])
    names = sorted(p.name for p in corpus.iterdir() if (p / 'instag' / 'mouth_open.npy').exists())
    if len(names) < 3: sys.exit(f'{corpus}: fewer than 3 prepared speakers')
    clips = {n: clip(corpus / n) for n in names}
    rows = []
    for held in names:  # leave one speaker out: per-frame correlation and the sync score on the true lips
        m = fit_lipsync([clips[n][:2] for n in names if n != held], RIDGE)
        mel, gap, fps = clips[held]
        pred = m.predict(mel)
        ok = np.isfinite(gap)
        r = float(np.corrcoef(pred[ok], standardize(gap[ok]))[0, 1])
        s = sync_score(gap, pred)
        rows.append(dict(speaker=held, seconds=round(len(gap) / fps, 1), corr=round(r, 3), **s))
        print(json.dumps(rows[-1]), flush=True)
    mean = lambda k: round(float(np.mean([r[k] for r in rows])), 3)
    summary = (f'leave-one-speaker-out over {len(names)} speakers: per-frame correlation {mean("corr")} (mean), '
               f'sync offset within +-1 frame on {sum(abs(r["sync_offset"]) <= 1 for r in rows)}/{len(rows)} and within +-3 on '
               f'{sum(abs(r["sync_offset"]) <= 3 for r in rows)}/{len(rows)} speakers, sync_conf {mean("sync_conf")} (mean)')
    card = dict(summary=summary, corpus=str(corpus.name), speakers=names, ridge=RIDGE, commit=git_commit(),
                command='python tools/build_lipsync.py', leave_one_out=rows)
    model = fit_lipsync([clips[n][:2] for n in names], RIDGE, card=card)
    save_lipsync(LIPSYNC_FILE, model)
    table = '\n'.join(f'| {r["speaker"]} | {r["seconds"]} | {r["corr"]} | {r["sync_offset"]} | {r["sync_conf"]} |' for r in rows)
    (LIPSYNC_FILE.with_suffix('.md')).write_text(f"""# Model card: the lip-sync regressor (`lipsync.npz`)

What it is: a ridge regression from a 160-ms log-mel window around each video frame (clip-centred, pooled to 4 x 20
blocks, hop energies, +-2 frames of context; {len(model.weights)} weights) to the standardized inner-lip gap. It serves
only the offline lip-sync score of `instag evaluate` (`sync_offset`, `sync_conf`); it holds no image and no face.

Fitted on: the prepared real corpus `../shared/data/corpus` ({len(names)} speakers, {sum(r['seconds'] for r in rows):.0f} s;
licenses MIT / Apache-2.0 as `../shared/data/MANIFEST.md` lists them), inner-lip gaps measured by `instag prepare`'s face
mesh. None of the adaptation targets (the German presenter, the video-retalking clips) is in it.

Command: `{card['command']}` (ridge {RIDGE} per frame), commit {card['commit']}.

How well it does on a speaker it has never heard (leave one speaker out; the sync score of the true lips against the
prediction, offsets searched over +-15 frames):

| held-out speaker | seconds | per-frame corr | sync_offset | sync_conf |
|---|---|---|---|---|
{table}

{summary}. Weak per frame: a sync score from it says whether a video's lips move with its audio and at which offset; it is
not SyncNet, and its values are not comparable with the paper's Sync-C.
""")
    print(summary)
    return 0


if __name__ == '__main__': sys.exit(main())

"""Before/after strip of the neck seam: an adapted head driven by speech other than its own, over the torso layer of
a dataset prepared before the torso fill (BEFORE) and of the same recording prepared with it (AFTER).

Usage: .venv/bin/python tools/neck_seam.py RUN --before DATA_OLD --after DATA_NEW --audio SPEECH [--out nbs/images/neck_seam.png]
Prints, per dataset, the mean and the largest number of pixels per frame where the plate shows through the torso
layer's head hole (the loop frame's face/mouth/teeth labels, where the rendered face is under half opaque), and writes a
strip of the frames with the largest seam: the chin region, BEFORE above AFTER.
"""
import argparse, json, sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from instag.audio import load_audio  # noqa: E402
from instag.inference import load_run  # noqa: E402
from instag.layout import LABELS  # noqa: E402


def seams(head, feats, frames):
    "Per output frame: the composited RGB and the count of plate pixels seen through the head hole."
    out = []
    for k in frames:
        c = head.render(k, feats)
        labels = head.ds.frame(head.frame(k).index).labels
        hole = torch.isin(labels, torch.tensor([LABELS['face'], LABELS['mouth'], LABELS['teeth']]))
        background = head.ds.frame(head.frame(k).index).background  # the torso layer over the plate
        plate = torch.from_numpy(head.ds.plate).float() / 255 if isinstance(head.ds.plate, np.ndarray) else head.ds.plate
        shows_plate = hole & (c.face_alpha[..., 0] + c.mouth_alpha[..., 0] < 0.5) & ((background - plate).abs().amax(-1) < 2 / 255)
        out.append((c.rgb.clamp(0, 1).numpy(), int(shows_plate.sum())))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('run'); ap.add_argument('--before', required=True); ap.add_argument('--after', required=True)
    ap.add_argument('--audio', required=True); ap.add_argument('--frames', type=int, default=150)
    ap.add_argument('--out', default='nbs/images/neck_seam.png')
    a = ap.parse_args()
    torch.set_num_threads(1)
    heads = {name: load_run(a.run, dataset=d) for name, d in (('before', a.before), ('after', a.after))}
    h = heads['before']
    wav = load_audio(a.audio)
    T = min(a.frames, len(wav) * h.fps // 16000)
    feats = h.features(wav, frames=T)
    res = {name: seams(hd, feats, range(T)) for name, hd in heads.items()}
    stats = {name: dict(mean_px=round(float(np.mean([n for _, n in r])), 1), max_px=max(n for _, n in r)) for name, r in res.items()}
    worst = sorted(range(T), key=lambda k: -res['before'][k][1])[:4]
    S = h.height; y0, y1, x0, x1 = int(0.5 * S), int(0.85 * S), int(0.28 * S), int(0.72 * S)  # the chin
    rows = [np.concatenate([res[name][k][0][y0:y1, x0:x1] for k in sorted(worst)], 1) for name in ('before', 'after')]
    from PIL import Image
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    strip = Image.fromarray((np.concatenate(rows, 0) * 255).round().astype(np.uint8))
    strip.resize((2 * strip.width, 2 * strip.height), Image.NEAREST).save(a.out)
    print(json.dumps(dict(run=a.run, audio=a.audio, frames=T, shown=sorted(worst), **{f'seam_{k}': v for k, v in stats.items()}, out=a.out)))


if __name__ == '__main__':
    main()

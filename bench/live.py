"""Benchmark `instag live`: a speech file played in real time to the live server (no browser), frames at 256x256.

    python bench/live.py --quick               # 8 s of speech per setting, the two built heads below (~3 min)
    python bench/live.py --run RUN [--run RUN2] [--lookahead 0.1] [--seconds 10] [--write]

Each setting serves a head on 127.0.0.1 and streams speech to it through the same client the tests use
(`instag.live_server.play`: 20 ms chunks of 16-bit PCM, each sent when its last sample would have been spoken). It
reports the sustained frame rate (frames received per second of audio; frames the server skipped to keep up are not
counted), the audio-to-frame latency at the client (median and p95: from sending the chunk that holds a frame's audio
to receiving the frame, over the frames drawn while audio was arriving; the last ones wait for the end of the stream) and the floor the features set. The reference, measured in the same process on the same
head: drawing the same frames offline (`TrainedHead.render` at 256 px with features precomputed), as frames per second.

Without --run it builds two heads on one synthetic person at 256 px, adapted for a few steps with realistic Gaussian
counts (8000 face, 850 mouth, as a real adapted head has): one on the `real` prior with Whisper features (the default
for real people), one on the `synthetic` prior with log-mel features. The speech is `musetalk_eng.wav` from ../shared
(or the synthetic person's own audio when ../shared is absent). The last line is one JSON object: `live_fps_256` and
`audio_to_frame_ms` (median, p95) of the first head as `instag live` streams it by default (the exact lookahead; for a
Whisper head, its encoder in int8), then every setting, each with how far its frames are from the exact features'
(float32 encoder, the whole future): the mouth opening's correlation and the frames' PSNR.
"""
from __future__ import annotations
import argparse, json, os, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from instag.audio import load_audio  # noqa: E402
from instag.core import shared_data_dir  # noqa: E402
from instag.inference import load_run  # noqa: E402
from instag.layout import SAMPLE_RATE  # noqa: E402
from instag.live import LiveConfig, LiveHead  # noqa: E402
from instag.live_server import LiveServer, play  # noqa: E402
from _sections import write_section  # noqa: E402

TARGETS = dict(live_fps_256=25.0, audio_to_frame_ms=300.0)
REAL_SIZE = dict(synthesizer__face__init_points=8000, synthesizer__mouth__init_points=850)


def build_heads(root: Path) -> list[Path]:
    "A Whisper head (`real` prior) and a log-mel head (`synthetic` prior) on one synthetic person at 256 px."
    from instag.adapt import adapt, adapt_config
    from instag.prepare.pipeline import add_encoder_features
    from instag.synth.corpus import synthesize
    person = synthesize(identities=1, seconds=4, size=256, seed=3, out=root / 'corpus', progress=False, video=False)[0]
    add_encoder_features(person, 'whisper-base')
    steps = dict(seconds=3.0, face_iterations=20, mouth_iterations=10, fuse_iterations=5, static_iterations=1,
                 warmup_iterations=5, eval_frames=2, eval_lmd=False, checkpoint_every_s=1e9, **REAL_SIZE)
    runs = []
    for prior in ('real', 'synthetic'):
        t = adapt(person, adapt_config('cpu', prior=prior, **steps), run_dir=root / f'run-{prior}', verbose=False, evaluate=False)
        runs.append(t.run_dir)
    return runs


def offline_fps(head, wav: np.ndarray, frames: int = 40) -> float:
    "Frames per second of drawing `frames` frames offline at 256 px, features precomputed (the reference)."
    live = LiveHead(head, LiveConfig(size=256))
    feats = head.features(wav[:SAMPLE_RATE * 3], frames=frames + 8)
    live.add(feats)
    live.frame(0)  # warm-up
    t = time.perf_counter()
    for k in range(frames): live.frame(k)
    return frames / (time.perf_counter() - t)


def drift(head, wav: np.ndarray, lookahead: float | None, encoder: str) -> tuple[float, float]:
    "(mouth r, frames PSNR dB) of a setting against the exact features (float32, the whole future): 20 ms chunks, every frame."
    from instag.live import stream
    from instag.losses import psnr
    chunks = lambda: (wav[i:i + 320] for i in range(0, len(wav), 320))  # each frame computed once its lookahead arrived
    run = lambda la, enc: list(stream(head, chunks(), LiveConfig(size=128, lookahead_s=la, encoder=enc)))
    exact, got = run(None, 'float32'), run(lookahead, encoder)
    r = float(np.corrcoef([f.mouth for f in exact], [f.mouth for f in got])[0, 1])
    pictures = lambda frames: torch.from_numpy(np.stack([f.rgb for f in frames[::5]]).astype(np.float32) / 255)
    return r, float(psnr(pictures(got), pictures(exact)))


def measure(head, wav: np.ndarray, lookahead: float | None, encoder: str) -> dict:
    server = LiveServer(head, LiveConfig(size=256, lookahead_s=lookahead, max_behind=2, encoder=encoder), port=0,
                        verbose=False).start()
    try: got = play(server.url, wav)
    finally: server.stop()
    frames = got['frames']
    steady = [f['latency_ms'] for f in frames if not f['tail']]  # (the frames drawn at the stop waited for it, not for audio)
    lat = np.array(steady) if steady else np.array([np.nan])
    seconds = len(wav) / SAMPLE_RATE
    return dict(features=head.audio_source, encoder=encoder, lookahead_s=got['ready']['lookahead_s'], frames=len(frames),
                skipped=got['end']['skipped'] if got['end'] else None,
                features_skipped=got['end']['features_skipped'] if got['end'] else None, live_fps=round(len(frames) / seconds, 2),
                latency_median_ms=round(float(np.median(lat)), 1), latency_p95_ms=round(float(np.percentile(lat, 95)), 1),
                latency_floor_ms=got['ready']['latency_floor_ms'])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--run', action='append', type=Path, help='a run to stream (repeatable); default: build two heads')
    ap.add_argument('--quick', action='store_true', help='8 s of speech per setting')
    ap.add_argument('--seconds', type=float, default=None, help='seconds of speech per setting (default 15, --quick 8)')
    ap.add_argument('--lookahead', type=float, action='append', default=None,
                    help='also stream with this lookahead (s), besides the exact features (default: 0.25 and 0.1)')
    ap.add_argument('--write', action='store_true', help='write the section of BENCHMARKS.md')
    a = ap.parse_args()
    torch.set_num_threads(2)
    seconds = a.seconds or (8.0 if a.quick else 15.0)
    lookaheads = [None] + (a.lookahead if a.lookahead is not None else [0.25, 0.1])
    tmp = Path(tempfile.mkdtemp(prefix='instag-bench-live-'))
    t = time.time()
    runs = a.run or build_heads(tmp)
    print(f'heads: {", ".join(str(r) for r in runs)} ({time.time() - t:.0f} s to load or build)', flush=True)
    shared = shared_data_dir()
    speech = shared / 'musetalk_eng.wav' if shared and (shared / 'musetalk_eng.wav').exists() else None
    rows = []
    for run in runs:
        head = load_run(run)
        wav = load_audio(speech if speech else head.ds.root / 'aud.wav', SAMPLE_RATE)
        wav = np.tile(wav, int(np.ceil(seconds * SAMPLE_RATE / len(wav))))[:int(seconds * SAMPLE_RATE)]
        reference = offline_fps(head, wav)
        n = head.model.num_gaussians()
        exact = LiveHead(head).features.future_s
        whisper = 'whisper' in head.audio_source
        settings = [(None, 'int8')] + [(None, 'float32')] * whisper  # (a lookahead past the exact one changes nothing)
        settings += [(la, 'int8') for la in lookaheads if la is not None and la < exact]
        for lookahead, encoder in settings:
            row = dict(run=run.name, gaussians=n, offline_fps=round(reference, 2), **measure(head, wav, lookahead, encoder))
            row['live_vs_offline'] = round(row['live_fps'] / reference, 3)
            exact_setting = lookahead is None and (encoder == 'float32' or not whisper)
            r, db = (1.0, None) if exact_setting else drift(head, wav, lookahead, encoder)
            row['mouth_r_vs_exact'], row['psnr_vs_exact_db'] = round(r, 3), None if db is None else round(db, 1)
            rows.append(row)
            print(f"{run.name} [{row['features']}, {encoder}] lookahead {row['lookahead_s']:.3f} s: {row['live_fps']:.1f} fps "
                  f"({row['skipped']} skipped, {row['features_skipped']} without their own features; offline drawing {reference:.1f} fps, ratio {row['live_vs_offline']:.2f}), "
                  f"latency median {row['latency_median_ms']:.0f} ms, p95 {row['latency_p95_ms']:.0f} ms "
                  f"(floor {row['latency_floor_ms']:.0f} ms); mouth r vs exact features {row['mouth_r_vs_exact']:.3f}, frames {row['psnr_vs_exact_db']} dB", flush=True)
    head_row = rows[0]
    summary = dict(live_fps_256=head_row['live_fps'], audio_to_frame_ms=dict(median=head_row['latency_median_ms'],
                   p95=head_row['latency_p95_ms']), features=head_row['features'], speech=str(speech or 'own audio'),
                   seconds=seconds, threads=torch.get_num_threads(), cpus=os.cpu_count(), targets=TARGETS, settings=rows)
    if a.write:
        lines = ['| run | features | encoder | Gaussians | lookahead (s) | live fps | skipped | frames without own features | offline fps | latency median / p95 (ms) | floor (ms) | mouth r vs exact | frames vs exact (dB) |',
                 '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
        lines += [f"| {r['run']} | {r['features']} | {r['encoder'] if 'whisper' in r['features'] else '-'} | {sum(r['gaussians'].values())} | {r['lookahead_s']:.3f} | {r['live_fps']:.1f} | "
                  f"{r['skipped']} | {r['features_skipped']} | {r['offline_fps']:.1f} | {r['latency_median_ms']:.0f} / {r['latency_p95_ms']:.0f} | "
                  f"{r['latency_floor_ms']:.0f} | {r['mouth_r_vs_exact']:.3f} | {r['psnr_vs_exact_db'] or '(the exact)'} |" for r in rows]
        cmd = 'python bench/live.py' + (' --quick' if a.quick else '') + ''.join(f' --run {r}' for r in (a.run or []))
        write_section('live' if a.run else 'live-quick', f'## Live streaming{"" if a.run else " (built heads)"}\n`{cmd}` ({time.strftime("%Y-%m-%d")}, {os.cpu_count()} cores, '
                      f'{seconds:.0f} s of speech per row, played in real time):\n\n' + '\n'.join(lines))
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())

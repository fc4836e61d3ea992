"""Motion-aligned adaptation speed at 256x256: face and mouth step rates, the cpu preset's projected time, render FPS.

Usage: .venv/bin/python bench/adapt.py [--quick] [--threads 2] [--no-write]
Writes the section between `<!-- bench:adapt -->` and `<!-- /bench:adapt -->` of BENCHMARKS.md; the last line printed is
one JSON object (adapt_its_256, adapt_seconds, render_fps_256, ...).

The steps are the real `Trainer.train_step` of an `instag adapt` run (shipped `synthetic` prior, aligner on, geometry
loss and the face stage's hole term on from the first step, the mouth reading the hook with tau_M) on a synthetic
256x256 person, densification off so N stays at the cpu preset's cap (8000 face, 800 mouth). Reference in the same
process: the same steps of an `instag train` model (no aligner, no geometry, no hook; the hole term on as well), so
`adaptation overhead` = reference rate / adaptation rate. The training frames are decoded into the dataset's cache
before the clock starts, as they are after the first few hundred steps of a run. `adapt_seconds`
projects the cpu preset (face + mouth + fuse iterations) from the measured rates: training only, without evaluation.
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _sections import write_section  # noqa: E402
from instag.adapt import PRESETS, adapt_config, make_adapter, resolve_adapt  # noqa: E402
from instag.data import TalkingHeadDataset  # noqa: E402
from instag.synth.corpus import synthesize  # noqa: E402


def trainer(root: Path, prior: str, threads: int, **over):
    base = dict(seconds=5.0, face_iterations=10 ** 6, mouth_iterations=10 ** 6, static_iterations=0, warmup_iterations=0,
                losses__geometry_start=0, losses__hole_start=0, threads=threads, synthesizer__face__init_points=8000,
                synthesizer__mouth__init_points=800, densify__refine_start=10 ** 9, prior=prior)
    cfg = adapt_config('cpu', **{**base, **over})
    ds = TalkingHeadDataset(root, cfg.data)
    cfg = resolve_adapt(cfg, ds)
    t = make_adapter(cfg, ds, root.parent / f'run-{prior}', verbose=False, evaluate=False)
    for i in t.train_ids: ds.frame(i)  # steady state: a 2000-step run decodes each of its 125 frames once (about 1 s)
    return t


def rate(t, stage: int, steps: int) -> float:
    t.stage_index, t.step = stage, 0
    t.setup_stage()
    for _ in range(3): t.train_step(); t.step += 1
    w = time.perf_counter()
    for _ in range(steps): t.train_step(); t.step += 1
    return steps / (time.perf_counter() - w)


@torch.no_grad()
def render_fps(t, frames: int) -> float:
    m = t.model.eval()
    fr = [t.ds.frame(i) for i in t.train_ids[:8]]
    go = lambda k: m(m.conditions(fr[k % 8].audio, fr[k % 8].aus), fr[k % 8].camera, fr[k % 8].background, dilate=True)
    for k in range(2): go(k)
    w = time.perf_counter()
    for k in range(frames): go(k)
    return frames / (time.perf_counter() - w)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='fewer repeats (under 4 minutes)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--no-write', action='store_true', help='print only, leave BENCHMARKS.md alone')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    load = os.getloadavg()[0]
    steps, frames = (20, 30) if a.quick else (60, 80)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize(identities=1, seconds=8, size=256, seed=3, out=Path(tmp) / 'corpus', progress=False, video=False)[0]
        ad, ref = trainer(root, 'synthetic', a.threads), trainer(root, 'none', a.threads, hook=False, geometry=False)
        face, face_ref = rate(ad, 0, steps), rate(ref, 0, steps)
        mouth, mouth_ref = rate(ad, 1, steps), rate(ref, 1, steps)
        fuse = rate(ad, 2, max(5, steps // 2))
        fps = render_fps(ad, frames)
    p = PRESETS['cpu']
    seconds = p['face_iterations'] / face + p['mouth_iterations'] / mouth + p['fuse_iterations'] / fuse
    load_after = os.getloadavg()[0]
    total = p['face_iterations'] + p['mouth_iterations'] + p['fuse_iterations']
    result = dict(adapt_its_256=round(total / seconds, 2), adapt_seconds=round(seconds, 1), face_its_256=round(face, 2),
                  mouth_its_256=round(mouth, 2), fuse_its_256=round(fuse, 2), reference_face_its_256=round(face_ref, 2),
                  reference_mouth_its_256=round(mouth_ref, 2), render_fps_256=round(fps, 2), threads=a.threads,
                  load_before=round(load, 2), load_after=round(load_after, 2), quick=a.quick)
    cmd = ('python bench/adapt.py ' + ' '.join(sys.argv[1:] if argv is None else argv)).strip()
    lines = ['## Motion-aligned adaptation at 256x256 (`instag.adapt`)', '',
             f'`{cmd}` on {platform.processor() or platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, '
             f'{a.threads} threads; {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; load average {load:.1f} before, '
             f'{load_after:.1f} after. 8000 face + 800 mouth Gaussians (the cpu preset\'s cap), shipped `synthetic` prior.', '',
             '| stage | adaptation (aligner, geometry, hook + tau_M) | reference: `instag train` step | overhead |', '|---|---:|---:|---:|',
             f'| face | {face:.2f} it/s | {face_ref:.2f} it/s | {face_ref / face:.2f}x |',
             f'| mouth | {mouth:.2f} it/s | {mouth_ref:.2f} it/s | {mouth_ref / mouth:.2f}x |',
             f'| fuse | {fuse:.2f} it/s | | |', '',
             f'The cpu preset ({p["face_iterations"]} + {p["mouth_iterations"]} + {p["fuse_iterations"]} iterations) projects to '
             f'{seconds:.0f} s of training ({seconds / 60:.1f} min, without the evaluation); an adapted head renders at {fps:.1f} FPS '
             '(both branches deformed, aligners and hook, composited with the dilated mouth).']
    section = '\n'.join(lines)
    print(section)
    if not a.no_write: write_section('adapt', section)
    print(json.dumps(result))
    return 0


if __name__ == '__main__': sys.exit(main())

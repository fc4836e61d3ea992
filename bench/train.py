"""Talking-head training and inference speed at 256x256: face-branch training iterations/s and composited render FPS.

Usage: .venv/bin/python bench/train.py [--quick] [--face N] [--mouth N] [--threads 2] [--no-write]
Writes the section between `<!-- bench:train -->` and `<!-- /bench:train -->` of BENCHMARKS.md (other sections are
kept); the last line printed is one JSON object (train_its_256, render_fps_256, gaussians, ...).

The training step is the real `Trainer.train_step` of the face stage (frame decode, deform, render, masked L1 + SSIM,
alpha and delta losses, backward, Adam), on a 256x256 example dataset, densification off so N stays fixed. The render
is a full output frame as `instag render` makes it: both branches deformed by their motion fields, rendered, composited
over the torso plate with the dilated mouth. Reference in the same process: rendering the same canonical Gaussians
without the motion fields (the renderer alone), so `motion overhead` = reference FPS / full FPS.
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: see instag.train.reexec_with_passive_openmp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _sections import write_section  # noqa: E402
from instag.example_data import write_example_dataset  # noqa: E402
from instag.trainer import Trainer  # noqa: E402
from instag.train import make_trainer as make_train_trainer, train_config  # noqa: E402
from instag.data import TalkingHeadDataset  # noqa: E402

TARGET_ITS, TARGET_FPS = 10.0, 30.0


def cpu_time() -> float:
    t = os.times(); return t.user + t.system


def make_trainer(root: Path, face: int, mouth: int, threads: int) -> Trainer:
    cfg = train_config('cpu', seconds=0.8, face_iterations=10 ** 6, static_iterations=0, threads=threads,
                       synthesizer__face__init_points=face, synthesizer__mouth__init_points=mouth, data__audio='mel',
                       densify__refine_start=10 ** 9, synthesizer__face__motion__audio_in_dim=80,
                       synthesizer__mouth__motion__audio_in_dim=80)
    ds = TalkingHeadDataset(root, cfg.data)
    t = make_train_trainer(cfg, ds, root / 'run', verbose=False, evaluate=False)
    t.setup_stage()
    return t


def bench_train(t: Trainer, steps: int) -> tuple[float, float]:
    for _ in range(3): t.train_step(); t.step += 1     # warm-up (extension load, caches)
    w, c = time.perf_counter(), cpu_time()
    for _ in range(steps): t.train_step(); t.step += 1
    return steps / (time.perf_counter() - w), (cpu_time() - c) / steps


@torch.no_grad()
def bench_render(t: Trainer, frames: int) -> tuple[float, float, float]:
    m, ids = t.model, t.train_ids
    fr = [t.ds.frame(i) for i in ids[:8]]
    def full(k):  # the one frame path, as instag render and evaluate call it
        f = fr[k % len(fr)]
        return m(m.conditions(f.audio, f.aus), f.camera, f.background, dilate=True).rgb
    def reference(k):  # the same Gaussians, static
        f = fr[k % len(fr)]
        return m(m.conditions(f.audio, f.aus), f.camera, f.background, static=True).rgb
    out = []
    for fn in (full, reference):
        for k in range(2): fn(k)
        w, c = time.perf_counter(), cpu_time()
        for k in range(frames): fn(k)
        out.append((frames / (time.perf_counter() - w), (cpu_time() - c) / frames))
    (fps, cpu), (ref_fps, _) = out
    return fps, cpu, ref_fps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='fewer repeats (under 3 minutes)')
    ap.add_argument('--face', type=int, default=8000, help='face Gaussians (the cpu preset grows the face to its cap, 8000)')
    ap.add_argument('--mouth', type=int, default=800, help='mouth Gaussians (the cpu preset keeps 800)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--no-write', action='store_true', help='print only, leave BENCHMARKS.md alone')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    load = os.getloadavg()[0]
    steps, frames = (15, 20) if a.quick else (60, 80)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_example_dataset(Path(tmp) / 'ds', frames=30, size=256, val_frames=5)
        t = make_trainer(root, a.face, a.mouth, a.threads)
        its, its_cpu = bench_train(t, steps)
        fps, fps_cpu, ref_fps = bench_render(t, frames)
        n = t.model.num_gaussians()
    load_after = os.getloadavg()[0]
    result = dict(train_its_256=round(its, 2), train_cpu_s_per_it=round(its_cpu, 4), render_fps_256=round(fps, 2),
                  render_cpu_s_per_frame=round(fps_cpu, 4), renderer_only_fps_256=round(ref_fps, 2),
                  gaussians=n['face'] + n['mouth'], face_gaussians=n['face'], mouth_gaussians=n['mouth'],
                  threads=a.threads, load_before=round(load, 2), load_after=round(load_after, 2), quick=a.quick)
    cmd = ('python bench/train.py ' + ' '.join(sys.argv[1:] if argv is None else argv)).strip()
    lines = ['## Talking-head training and inference at 256x256 (`instag.train`, `instag.inference`)', '',
             f'`{cmd}` on {platform.processor() or platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, '
             f'{a.threads} threads; {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; load average {load:.1f} before, '
             f'{load_after:.1f} after (the machine is shared: wall rates fall with load, CPU seconds are the steadier number).',
             f'Targets: >= {TARGET_ITS:g} training it/s, >= {TARGET_FPS:g} FPS.', '',
             '| what | Gaussians (face + mouth) | wall rate | CPU s per item | target | met |', '|---|---|---:|---:|---:|---|',
             f'| face-branch training step | {n["face"]} | {its:.2f} it/s | {its_cpu:.3f} | {TARGET_ITS:g} it/s | {"yes" if its >= TARGET_ITS else "no"} |',
             f'| full composited frame (motion fields + 2 renders + dilated composite) | {n["face"]} + {n["mouth"]} | {fps:.1f} FPS | {fps_cpu:.3f} | {TARGET_FPS:g} FPS | {"yes" if fps >= TARGET_FPS else "no"} |',
             f'| reference: the same Gaussians rendered without motion fields | {n["face"]} + {n["mouth"]} | {ref_fps:.1f} FPS | | | |',
             '', f'Motion-field overhead at inference: {ref_fps / max(fps, 1e-9):.2f}x (reference FPS / full FPS).']
    section = '\n'.join(lines)
    print(section)
    if not a.no_write: write_section('train', section)
    print(json.dumps(result))
    return 0



if __name__ == '__main__': sys.exit(main())

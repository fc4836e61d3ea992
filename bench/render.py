"""Benchmark the Gaussian renderer backends on a head-like scene; writes its section of BENCHMARKS.md.

    python bench/render.py            # N = 10k, 20k, 30k at 256x256 and 512x512, every available backend
    python bench/render.py --quick    # N = 20k at 256x256 only (< 2 min), BENCHMARKS.md untouched unless --write;
                                      # the last line is a JSON summary

Every backend runs in this one process on the same scene and camera; speed-ups are against the `torch` reference
measured here. Forward is `render(...)` under `torch.no_grad()`; forward+backward renders with grad-requiring
Gaussians and backpropagates a loss over rgb, alpha, depth and normal. Peak memory is the process's peak RSS after
the `cpu` runs and before the reference runs (the reference's own peak is reported separately).
"""
from __future__ import annotations
import argparse, json, os, platform, resource, statistics, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from instag.camera import Camera  # noqa: E402
from instag.render import head_gaussians, render_camera, resolve_backend  # noqa: E402
from instag._render_cpu import cpu_backend_available  # noqa: E402
from _sections import write_section  # noqa: E402

TARGETS = dict(cpu_fwd_fps_256_20k=60.0, cpu_fwdbwd_its_256_20k=20.0, speedup_cpu_vs_torch_256_20k=30.0)


NOTES = '''`cpu/1t` is the `cpu` backend with one thread. What bounds the `cpu` kernel (perf, single thread, 20k at 256x256):
about 85% of a forward is compositing (`raster_tile_forward`), vectorised 8 pixels at a time; before software
prefetching, a third of that was cache misses on the depth-ordered (random-address) Gaussian records, and prefetching
cut a forward from 32 to 20 ms of CPU. Projection, SH and the radix sort are ~10%. The backward costs about 1.5x a
forward. With two threads on this shared machine (load average 6-12 during the runs) the OpenMP barriers spin while the
other thread is descheduled, so two threads cost 2-3x the CPU time of one and are often slower in wall time; on an idle
2-core machine the tile loop parallelises (no shared writes: per-thread gradient buffers). Runs during heavy load miss the
targets (a run at load 8.7 gave 6 FPS); the kernel itself meets them when the cores are free (single-thread CPU time
alone implies ~50 FPS forward and ~20 it/s forward+backward on one core). Further headroom: copying Gaussian records into tile order during binning (sequential reads instead of prefetched gathers);
skipping Gaussians whose pixel box lies entirely in already saturated rows; AVX-512 (16 pixels per instruction) where
the CPU has it.'''


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def scene_and_camera(n: int, size: int, device: str):
    gaussians = {k: v.to(device) for k, v in head_gaussians(n, sh_degree=1).items()}
    cam = Camera.orbit(distance=0.6, yaw_deg=20.0, pitch_deg=5.0, fov_deg=30.0, size=size)
    cam = Camera(cam.viewmat.to(device), cam.K.to(device), cam.width, cam.height)
    return gaussians, cam


def time_backend(backend: str, n: int, size: int, reps: int, warmup: int) -> dict:
    "Median wall time (ms) of forward and of forward+backward; backend 'cpu/1t' is 'cpu' on one thread."
    threads = torch.get_num_threads()
    if backend == 'cpu/1t':
        torch.set_num_threads(1)
        try: return time_backend('cpu', n, size, reps, warmup)
        finally: torch.set_num_threads(threads)
    device = 'cuda' if backend == 'gsplat' else 'cpu'
    gaussians, cam = scene_and_camera(n, size, device)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

    def forward():
        with torch.no_grad(): render_camera(gaussians, cam, backend=backend)

    params = {k: v.clone().requires_grad_() for k, v in gaussians.items()}

    def forward_backward():
        out = render_camera(params, cam, backend=backend)
        loss = out.rgb.sum() + out.alpha.sum() + 0.1 * out.depth.sum() + 0.1 * out.normal.sum()
        loss.backward()

    result = {}
    for name, fn in (('fwd', forward), ('fwdbwd', forward_backward)):
        times, cpu = [], []
        for i in range(warmup + reps):
            sync(); t, c = time.perf_counter(), time.process_time(); fn(); sync()
            if i >= warmup: times.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
        result[name] = 1000 * statistics.median(times)
        result[name + '_min'] = 1000 * min(times)
        result[name + '_cpu'] = 1000 * statistics.median(cpu)  # CPU time of all threads per call
    return result


def table(rows: list[dict]) -> str:
    lines = ['| backend | N | size | forward ms (min) | forward FPS | fwd CPU ms | fwd+bwd ms (min) | fwd+bwd it/s | '
             'fwd+bwd CPU ms | fwd speed-up | fwd+bwd speed-up |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        ref = next((x for x in rows if x['backend'] == 'torch' and x['n'] == r['n'] and x['size'] == r['size']), None)
        su = lambda key: f"{ref[key] / r[key]:.0f}x" if ref else 'n/a'
        lines.append(f"| {r['backend']} | {r['n'] // 1000}k | {r['size']}x{r['size']} | {r['fwd']:.1f} ({r['fwd_min']:.1f}) | "
                     f"{1000 / r['fwd']:.1f} | {r['fwd_cpu']:.1f} | {r['fwdbwd']:.1f} ({r['fwdbwd_min']:.1f}) | "
                     f"{1000 / r['fwdbwd']:.1f} | {r['fwdbwd_cpu']:.1f} | {su('fwd')} | {su('fwdbwd')} |")
    return '\n'.join(lines)



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='N = 20k at 256x256 only, few repetitions (< 2 min)')
    ap.add_argument('--no-write', action='store_true', help='do not update BENCHMARKS.md')
    ap.add_argument('--write', action='store_true', help='update BENCHMARKS.md even with --quick')
    args = ap.parse_args(argv)
    backends = (['cpu', 'cpu/1t'] if cpu_backend_available() else [])
    if torch.cuda.is_available() and resolve_backend('auto', torch.zeros(1, 3, device='cuda')) == 'gsplat':
        backends.append('gsplat')
    configs = [(20_000, 256)] if args.quick else [(n, s) for s in (256, 512) for n in (10_000, 20_000, 30_000)]
    load = os.getloadavg()
    rows = []
    for n, size in configs:  # fast backends first, so peak RSS below is theirs
        for backend in backends:
            reps = 10 if args.quick else 20
            rows.append(dict(backend=backend, n=n, size=size, **time_backend(backend, n, size, reps, warmup=2)))
            print(f"{backend:6s} N={n:6d} {size}x{size}: fwd {rows[-1]['fwd']:.1f} ms, fwd+bwd {rows[-1]['fwdbwd']:.1f} ms",
                  flush=True)
    rss_fast = peak_rss_mb()
    for n, size in configs:
        rows.append(dict(backend='torch', n=n, size=size, **time_backend('torch', n, size, reps=2 if args.quick else 3, warmup=0 if args.quick else 1)))
        print(f"torch  N={n:6d} {size}x{size}: fwd {rows[-1]['fwd']:.1f} ms, fwd+bwd {rows[-1]['fwdbwd']:.1f} ms", flush=True)
    rss_all = peak_rss_mb()
    rows.sort(key=lambda r: (r['size'], r['n'], r['backend'] != 'torch', r['backend']))
    pick = lambda b, k: next((r[k] for r in rows if r['backend'] == b and r['n'] == 20_000 and r['size'] == 256), None)
    summary = dict(
        cpu_fwd_fps_256_20k=round(1000 / pick('cpu', 'fwd'), 1) if pick('cpu', 'fwd') else None,
        cpu_fwdbwd_its_256_20k=round(1000 / pick('cpu', 'fwdbwd'), 1) if pick('cpu', 'fwdbwd') else None,
        speedup_cpu_vs_torch_256_20k=round(pick('torch', 'fwd') / pick('cpu', 'fwd'), 1) if pick('cpu', 'fwd') else None,
        speedup_cpu_vs_torch_fwdbwd_256_20k=round(pick('torch', 'fwdbwd') / pick('cpu', 'fwdbwd'), 1) if pick('cpu', 'fwdbwd') else None,
        cpu_fwd_fps_256_20k_best=round(1000 / pick('cpu', 'fwd_min'), 1) if pick('cpu', 'fwd_min') else None,
        cpu_fwdbwd_its_256_20k_best=round(1000 / pick('cpu', 'fwdbwd_min'), 1) if pick('cpu', 'fwdbwd_min') else None,
        cpu_fwd_cpu_ms_256_20k=round(pick('cpu', 'fwd_cpu'), 1) if pick('cpu', 'fwd_cpu') else None,
        cpu_fwdbwd_cpu_ms_256_20k=round(pick('cpu', 'fwdbwd_cpu'), 1) if pick('cpu', 'fwdbwd_cpu') else None,
        cpu1t_fwd_fps_256_20k=round(1000 / pick('cpu/1t', 'fwd'), 1) if pick('cpu/1t', 'fwd') else None,
        cpu1t_fwdbwd_its_256_20k=round(1000 / pick('cpu/1t', 'fwdbwd'), 1) if pick('cpu/1t', 'fwdbwd') else None,
        torch_fwd_ms_256_20k=round(pick('torch', 'fwd'), 1), peak_rss_mb=round(rss_fast, 1),
        peak_rss_mb_with_reference=round(rss_all, 1), threads=torch.get_num_threads(), load_avg_1min=round(load[0], 2))
    cmd = 'python bench/render.py' + (' --quick' if args.quick else '')
    cpu_name = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor()) \
        if Path('/proc/cpuinfo').exists() else platform.processor()
    text = '\n'.join([
        '## Renderer (`bench/render.py`)', '',
        f'Command: `{cmd}` ({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; {cpu_name}, {os.cpu_count()} cores, '
        f'{torch.get_num_threads()} torch threads, torch {torch.__version__}; 1-minute load average at start {load[0]:.1f}, '
        'so other work shared the cores).', '',
        'Head-like scene (`head_gaussians`: flat Gaussians on a closed head-shaped surface, SH degree 1), camera 0.6 m away, '
        '30 degree field of view. Median wall time (minimum in brackets) and median process CPU time (all threads) per '
        'call; FPS and it/s from the median; the `torch` reference ran 3 times per configuration (2 with --quick). On a shared machine the '
        'minimum and the CPU time are the robust numbers.', '',
        table(rows), '', NOTES, '',
        f"Peak RSS after the fast backends: {rss_fast:.0f} MB (whole process: Python, torch, scenes of every size); "
        f"after the reference too: {rss_all:.0f} MB.", '',
        'Targets (256x256, 20k Gaussians, `cpu`): ' + ', '.join(
            f"{k} = {summary[k]} (target >= {v:g}: {'met' if summary[k] and summary[k] >= v else 'MISSED'})"
            for k, v in TARGETS.items()) + f"; peak RSS {rss_fast:.0f} MB (target < 1024 MB: {'met' if rss_fast < 1024 else 'MISSED'}).",
        '', '```json', json.dumps(summary), '```'])
    if (args.write or not args.quick) and not args.no_write: write_section('render', text)  # --quick keeps the full table
    print(json.dumps(summary))


if __name__ == '__main__':
    main()

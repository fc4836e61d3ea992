"""Tri-plane grid encoder: forward + backward time for 20k points, fast paths vs the reference, in one process.

Usage: .venv/bin/python bench/grid.py [--points 20000] [--repeats 30] [--threads 1,2] [--no-write]
Writes the section between `<!-- bench:grid -->` and `<!-- /bench:grid -->` of BENCHMARKS.md (other sections are kept).
"""
from __future__ import annotations
import argparse, os, platform, statistics, sys, time
from pathlib import Path

import torch

from _sections import write_section
from instag.grid import TriPlaneConfig, TriPlaneEncoder, _triplane_gather, _triplane_reference, mouth_grid_config

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 15.0  # issue #6: forward + backward of 20k points on the 2-core CPU

def time_ms(fn, repeats: int, warmup: int = 3) -> tuple[float, float, float]:
    "(min wall, median wall, median process CPU) milliseconds of `fn()` over `repeats` runs after `warmup` runs."
    for _ in range(warmup): fn()
    ts, cs = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time(); fn()
        ts.append((time.perf_counter() - t) * 1e3); cs.append((time.process_time() - c) * 1e3)
    return min(ts), statistics.median(ts), statistics.median(cs)

def fwd_bwd(encode, tables, means, grad_means: bool):
    def run():
        x = means.detach().requires_grad_(grad_means)
        tables.grad = None
        encode(x).sum().backward()
    return run

def bench(name: str, cfg: TriPlaneConfig, n: int, repeats: int, threads: int) -> list[tuple]:
    torch.manual_seed(0)
    enc = TriPlaneEncoder(cfg)
    means = torch.rand(n, 3) * 0.2 - 0.1
    paths = {'dense (grid_sample)': enc,
             'gather': lambda x: _triplane_gather(x, enc.tables, cfg, enc.levels),
             'reference': lambda x: _triplane_reference(x, enc.tables, cfg)}
    rows = []
    for grad_means in (True, False):
        times = {p: time_ms(fwd_bwd(f, enc.tables, means, grad_means), *((repeats, 3) if p != 'reference' else (2, 1)))
                 for p, f in paths.items()}
        ref = times['reference'][1]
        for p, (lo, med, cpu) in times.items():
            rows.append((name, threads, 'yes' if grad_means else 'no', p, lo, med, cpu, ref / med))
    return rows

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--points', type=int, default=20_000)
    ap.add_argument('--repeats', type=int, default=30)
    ap.add_argument('--threads', default='1,2', help='comma-separated torch thread counts to run')
    ap.add_argument('--no-write', action='store_true', help='print only, leave BENCHMARKS.md alone')
    a = ap.parse_args(argv)
    load = ' / '.join(f'{x:.1f}' for x in os.getloadavg())
    rows = []
    for threads in map(int, a.threads.split(',')):
        torch.set_num_threads(threads)
        rows += bench('face', TriPlaneConfig(backend='torch'), a.points, a.repeats, threads)
        rows += bench('mouth', mouth_grid_config(backend='torch'), a.points, a.repeats, threads)
    cmd = 'python bench/grid.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    lines = [f'## Tri-plane grid encoder (`instag.grid`), forward + backward, {a.points} points', '',
             f'`{cmd.strip()}` on {platform.processor() or platform.machine()} ({os.cpu_count()} cores), '
             f'torch {torch.__version__}; {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; '
             f'load average before the run {load}. Target: dense path <= {TARGET_MS:g} ms. '
             'Speed-up = reference median / path median (wall). CPU ms = process CPU time (all threads) per call: '
             'on a shared machine the minimum wall time and the CPU time are the robust numbers.', '',
             '| grid | threads | grad to points | path | min ms | median ms | CPU ms | speed-up |',
             '|---|---:|---|---|---:|---:|---:|---:|']
    lines += [f'| {g} | {t} | {gm} | {p} | {lo:.1f} | {med:.1f} | {cpu:.1f} | {r:.1f}x |'
              for g, t, gm, p, lo, med, cpu, r in rows]
    section = '\n'.join(lines)
    print(section)
    if not a.no_write: write_section('grid', section)
    return 0


if __name__ == '__main__': sys.exit(main())

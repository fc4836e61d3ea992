"""Benchmark `instag synth`: the issue #4 target is 6 identities x 20 s at 256x256 in <= 180 s on 2 CPU cores.

Usage: python bench/synth.py [--identities 6] [--seconds 20] [--size 256] [--out DIR]

Prints one JSON line: wall and CPU seconds of the whole corpus, frames per second, and, as the in-process reference,
the time of the bare render of the same head (pose + render, no files) so the ratio shows what writing costs.
The machine's load average is printed too: on a shared machine, wall time depends on what else runs.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

from instag.synth.corpus import synthesize, make_identity, world_camera, render_frame, SynthConfig
from instag.synth.head import build_head
from instag.synth.pose import pose_head
from instag.render import resolve_backend

def render_only(frames: int, size: int) -> float:
    "Seconds per frame to pose and render identity 0 (the reference: no encoding, no files)."
    ident = make_identity(0, 0, frames / 25)
    head = build_head(ident.shape, 0)
    V, K, _ = world_camera(size)
    m = ident.motion
    old = torch.get_num_threads(); torch.set_num_threads(SynthConfig().render_threads)
    t = time.perf_counter()
    for i in range(frames):
        g = pose_head(head, float(m['jaw'][i]), float(m['rounding'][i]), float(m['closure'][i]), m['aus'][i], m['pose'][i])
        render_frame(head, g, V, K, size)
    torch.set_num_threads(old)
    return (time.perf_counter() - t) / frames

def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--identities', type=int, default=6); p.add_argument('--seconds', type=float, default=20)
    p.add_argument('--size', type=int, default=256); p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix='instag-bench-synth-'))
    backend = resolve_backend('auto', torch.zeros(1, 3))
    render_only(5, a.size)  # warm-up: builds/loads the CPU kernel
    ref = render_only(50, a.size)
    load0 = os.getloadavg()[0]
    t, c = time.perf_counter(), time.process_time()
    synthesize(a.identities, a.seconds, a.size, seed=0, out=out, progress=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    frames = a.identities * round(a.seconds * 25)
    res = dict(identities=a.identities, seconds=a.seconds, size=a.size, frames=frames, backend=backend,
               wall_s=round(wall, 1), cpu_s=round(cpu, 1), ms_per_frame=round(1000 * wall / frames, 1),
               render_only_ms_per_frame=round(1000 * ref, 1), ratio_to_render_only=round(wall / frames / ref, 2),
               target_s=180, meets_target=wall <= 180, cores=os.cpu_count(),
               load_avg_before=round(load0, 2), load_avg_after=round(os.getloadavg()[0], 2), out=str(out))
    print(json.dumps(res), flush=True)
    return 0

if __name__ == '__main__': sys.exit(main())

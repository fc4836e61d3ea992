"""Pre-training cost as the corpus grows: iterations/s and peak memory with 2, 4 and 32 tiny identities.

Usage: .venv/bin/python bench/pretrain.py [--quick] [--steps N] [--no-write]
Writes the section between `<!-- bench:pretrain -->` and `<!-- /bench:pretrain -->` of BENCHMARKS.md; the last line
printed is one JSON object (pretrain_its_k2, pretrain_its_k32, peak_rss_mb_k4, peak_rss_mb_k32, ...).

Each corpus size runs in its own process (peak RSS is per process): the real `Pretrainer` face stage (sampler, render,
photometric/alpha/delta terms and the Negative Contrast Loss with `negatives = 2`, EMA, densification off so N stays
fixed) on tiny 64x64 example identities, timed after a warm-up. The reference is the 2-identity run in the same batch,
so `cost ratio k32/k2` = (s per iteration at 32) / (s per iteration at 2); targets: <= 1.6 and RSS k32/k4 <= 1.5.
"""
import argparse, json, os, platform, resource, subprocess, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_COST, TARGET_RSS = 1.6, 1.5


def child(corpus: Path, k: int, steps: int) -> dict:
    "Run `steps` face iterations on the first k identities; report it/s and peak RSS of this process."
    import torch
    from instag.pretrain import _datasets, make_pretrainer, pretrain_config
    listing = corpus / f'list{k}.txt'
    listing.write_text('\n'.join(str(corpus / f'id{i:02d}') for i in range(k)) + '\n')
    from instag.pretrain import read_corpus
    cfg = pretrain_config('cpu', face_iterations=10 ** 6, face_static_iterations=0, negatives=2, data__audio='mel',
                          densify__refine_start=10 ** 9, synthesizer__face__init_points=1000, threads=2)
    cfg = cfg.replace(synthesizer__face__motion__audio_in_dim=80, synthesizer__mouth__motion__audio_in_dim=80)
    t = make_pretrainer(cfg, _datasets(read_corpus(listing), cfg), corpus / f'run{k}', verbose=False)
    t.setup_stage()
    ema = next(cb for cb in t.callbacks if type(cb).__name__ == 'EMACallback'); ema.before_fit(t)
    def step():
        t.train_step(); t.step += 1; ema.after_step(t)
    for _ in range(5): step()
    w = time.perf_counter()
    for _ in range(steps): step()
    its = steps / (time.perf_counter() - w)
    return dict(k=k, its=round(its, 2), peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                gaussians=t.model.num_gaussians()['face'], optimizers=len(t.optimizers))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='fewer steps (under 3 minutes)')
    ap.add_argument('--steps', type=int, default=None)
    ap.add_argument('--no-write', action='store_true')
    ap.add_argument('--child', nargs=3, metavar=('CORPUS', 'K', 'STEPS'), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(Path(a.child[0]), int(a.child[1]), int(a.child[2])))); return 0
    steps = a.steps or (40 if a.quick else 150)
    from instag.example_data import write_example_dataset
    t0 = time.time()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        for i in range(32): write_example_dataset(corpus / f'id{i:02d}', frames=30, size=64, val_frames=8)
        rows = {}
        for k in (2, 4, 32):
            out = subprocess.run([sys.executable, __file__, '--child', str(corpus), str(k), str(steps)], capture_output=True,
                                 text=True, check=True)
            rows[k] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f'k={k:>2}: {rows[k]["its"]:.2f} it/s, peak RSS {rows[k]["peak_rss_mb"]:.0f} MB, '
                  f'{rows[k]["optimizers"]} optimizers', file=sys.stderr)
    cost = rows[2]['its'] / rows[32]['its']
    rss = rows[32]['peak_rss_mb'] / rows[4]['peak_rss_mb']
    result = dict(pretrain_its_k2=rows[2]['its'], pretrain_its_k4=rows[4]['its'], pretrain_its_k32=rows[32]['its'],
                  peak_rss_mb_k2=rows[2]['peak_rss_mb'], peak_rss_mb_k4=rows[4]['peak_rss_mb'], peak_rss_mb_k32=rows[32]['peak_rss_mb'],
                  cost_ratio_k32_k2=round(cost, 3), rss_ratio_k32_k4=round(rss, 3), steps=steps, quick=a.quick,
                  load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2), wall_s=round(time.time() - t0, 1))
    if not a.no_write:
        from _sections import write_section
        import torch
        body = [f'## Pre-training as the corpus grows (`instag.pretrain`)', '',
                f'`python bench/pretrain.py{" --quick" if a.quick else ""}` on {platform.machine()} ({os.cpu_count()} cores), torch '
                f'{torch.__version__}; {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; load average {load_before:.1f} before, '
                f'{result["load_after"]:.1f} after. Face stage on tiny 64x64 identities (1000 face Gaussians each), '
                f'`negatives = 2`, EMA every 10 steps, {steps} timed iterations per size, one process per size.',
                f'Targets: cost per iteration at 32 identities <= {TARGET_COST}x that at 2; peak RSS at 32 <= {TARGET_RSS}x that at 4.', '',
                '| identities | it/s | peak RSS MB | optimizers |', '|---:|---:|---:|---:|']
        body += [f'| {k} | {rows[k]["its"]:.2f} | {rows[k]["peak_rss_mb"]:.0f} | {rows[k]["optimizers"]} |' for k in (2, 4, 32)]
        body += ['', f'Cost ratio k32/k2: {cost:.2f}x ({"met" if cost <= TARGET_COST else "NOT met"}); '
                     f'RSS ratio k32/k4: {rss:.2f}x ({"met" if rss <= TARGET_RSS else "NOT met"}).']
        write_section('pretrain', '\n'.join(body))
    print(json.dumps(result))
    return 0


if __name__ == '__main__': sys.exit(main())

"""The adaptation acceptance grid, resumable: person x seed x variant, each an `instag adapt` run, one CSV row per cell.

Usage: .venv/bin/python tools/adapt_grid.py synthetic|german|real2 [--seeds 0 1 2] [--dry]
A finished cell (its metrics.json exists) is skipped; a killed one restarts from its checkpoint (`resume_adapt`).
Run directories go to outputs/adapt_grid/<grid>/ (not versioned); the table goes to
nbs/experiments/results/adapt_<grid>.csv (committed), one row per finished cell.
"""
import argparse, csv, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instag.adapt import adapt, adapt_config, resume_adapt  # noqa: E402
from instag.runs import CHECKPOINT, METRICS  # noqa: E402

CPU = adapt_config('cpu')
# a third of the budget: every iteration count of the schedule divided by 3 (stages, warm-ups, lr half-life, geometry
# start, and the densification window, which the cpu preset counts in iterations from each stage's start and end)
THIRD_STAGES = dict(face_iterations=CPU.face_iterations // 3, mouth_iterations=CPU.mouth_iterations // 3,
                    fuse_iterations=CPU.fuse_iterations // 3, warmup_iterations=CPU.warmup_iterations // 3,
                    motion_lr_half_life=CPU.motion_lr_half_life // 3, losses__geometry_start=CPU.losses.geometry_start // 3)
THIRD = dict(THIRD_STAGES, static_iterations=CPU.static_iterations // 3, densify__refine_start=CPU.densify.refine_start // 3,
             densify__refine_every=CPU.densify.refine_every // 3, densify__refine_stop=CPU.densify.refine_stop // 3)
VARIANTS = {'adapted': {}, 'scratch': dict(prior='none'), 'adapted_third': THIRD, 'scratch_third': dict(prior='none', **THIRD),
            # the first third-budget runs: stages cut, densification window not, so the face stage never densified
            'adapted_third_unscaled': THIRD_STAGES}
DEFAULT_VARIANTS = ('adapted', 'scratch', 'adapted_third')  # scratch_third: the from-scratch baseline at a third
# grid -> (datasets, prior, seconds of training, overrides); the test split is the dataset's held-out tail
GRIDS = {
    'synthetic': ([ROOT / 'data/adapt_synth/id00', ROOT / 'data/adapt_synth/id01'], 'synthetic', 5.0, {}),
    # prepared with: instag prepare ../shared/data/mimictalk_german_20s.mp4 --out data/german --size 256 --val-fraction 0.5
    'german': ([ROOT / 'data/german'], 'real', 5.0, dict(test_split='tail')),
    # a second real person outside the real prior's corpus (6.6 s: the first 5 s train, the last 1.6 s test), prepared with
    # instag prepare ../shared/data/videoretalking_face4.mp4 --out data/vr_face4 --size 256
    'vr_face4': ([ROOT / 'data/vr_face4'], 'real', 5.0, {}),
}
COLUMNS = ('grid', 'person', 'variant', 'seed', 'prior', 'iterations', 'psnr', 'psnr_face', 'ssim', 'baseline_psnr', 'lmd',
           'lip_open_corr_jaw', 'truth_lip_open_corr_jaw', 'lip_open_corr_truth', 'mouth_corr_jaw', 'mouth_corr_mask',
           'train_seconds', 'test_frames', 'run')


def row(grid: str, person: str, variant: str, seed: int, run: Path) -> dict:
    m = json.loads((run / METRICS).read_text())
    cfg = json.loads((run / 'run.json').read_text())
    from instag.adapt import AdaptConfig
    c = AdaptConfig.from_yaml(run / 'config.yaml')
    return dict(grid=grid, person=person, variant=variant, seed=seed, prior=cfg.get('prior', {}).get('name'),
                iterations=c.face_iterations + c.mouth_iterations + c.fuse_iterations,
                **{k: m.get(k) for k in COLUMNS[6:-1]}, run=str(run.relative_to(ROOT)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('grid', choices=sorted(GRIDS))
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS))
    ap.add_argument('--dry', action='store_true')
    a = ap.parse_args(argv)
    datasets, prior, seconds, over = GRIDS[a.grid]
    out = ROOT / 'outputs' / 'adapt_grid' / a.grid
    table = ROOT / 'nbs' / 'experiments' / 'results' / f'adapt_{a.grid}.csv'
    rows = []
    cells = [(d, s, v) for s in a.seeds for d in datasets for v in a.variants]
    for k, (d, seed, variant) in enumerate(cells):
        run = out / f'{d.name}-{variant}-s{seed}'
        print(f'[{k + 1}/{len(cells)}] {run.name}', file=sys.stderr, flush=True)
        if a.dry: continue
        if not (run / METRICS).exists():
            if (run / CHECKPOINT).exists(): resume_adapt(run, verbose=False)
            else:
                params = {'seconds': seconds, 'prior': prior, 'seed': seed, **over, **VARIANTS[variant]}
                adapt(d, adapt_config('cpu', **params), run_dir=run, verbose=False)
        rows.append(row(a.grid, d.name, variant, seed, run))
        table.parent.mkdir(parents=True, exist_ok=True)
        with open(table, 'w', newline='') as f:
            w = csv.DictWriter(f, COLUMNS); w.writeheader(); w.writerows(rows)
        print(json.dumps({k: rows[-1][k] for k in ('person', 'variant', 'seed', 'psnr', 'lip_open_corr_jaw', 'mouth_corr_jaw', 'train_seconds')}), flush=True)
    return 0


if __name__ == '__main__': sys.exit(main())

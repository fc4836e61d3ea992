"""Summaries of the adaptation grids (nbs/experiments/results/adapt_<grid>.csv): mean and spread per variant, and the
acceptance comparisons of issue 'Motion-Aligned Adaptation'.

Usage: .venv/bin/python tools/adapt_table.py [synthetic german ...] [--markdown]
"""
import argparse, csv, statistics, sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / 'nbs' / 'experiments' / 'results'
METRICS = ('psnr', 'psnr_face', 'lmd', 'lip_open_corr_jaw', 'lip_open_corr_truth', 'mouth_corr_jaw', 'train_seconds')
ORDER = ('scratch', 'scratch_third', 'adapted_third_unscaled', 'adapted_third', 'adapted')


def read(grid: str) -> list[dict]:
    path = RESULTS / f'adapt_{grid}.csv'
    if not path.exists(): return []
    with open(path) as f: return list(csv.DictReader(f))


def values(rows, variant, metric) -> list[float]:
    return [float(r[metric]) for r in rows if r['variant'] == variant and r.get(metric) not in (None, '', 'None')]


def cell(v: list[float]) -> str:
    if not v: return 'n/a'
    if len(v) == 1: return f'{v[0]:.3f}'
    return f'{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}'


def summary(grid: str) -> str:
    rows = read(grid)
    if not rows: return f'no results for {grid} yet'
    variants = [v for v in ORDER if any(r['variant'] == v for r in rows)]
    metrics = [m for m in METRICS if any(values(rows, v, m) for v in variants)]
    runs = {v: len([r for r in rows if r['variant'] == v]) for v in variants}
    people = sorted({r['person'] for r in rows})
    lines = [f'**{grid}** ({", ".join(people)}; runs per variant: {", ".join(f"{v} {n}" for v, n in runs.items())}; '
             'mean ± standard deviation over people and seeds)', '',
             '| variant | iterations | ' + ' | '.join(metrics) + ' |', '|---|---:|' + '---:|' * len(metrics)]
    for v in variants:
        its = sorted({r['iterations'] for r in rows if r['variant'] == v})
        lines.append(f'| {v} | {"/".join(its)} | ' + ' | '.join(cell(values(rows, v, m)) for m in metrics) + ' |')
    # paired differences against scratch (same person, same seed): the between-person spread cancels
    def paired(v, m):
        out = []
        for x in rows:
            if x['variant'] != v or x.get(m) in (None, '', 'None'): continue
            for y in rows:
                if y['variant'] == 'scratch' and y['person'] == x['person'] and y['seed'] == x['seed'] and y.get(m) not in (None, '', 'None'):
                    out.append(float(x[m]) - float(y[m]))
        return out
    lines += ['', '| paired difference vs scratch | ' + ' | '.join(metrics) + ' |', '|---|' + '---:|' * len(metrics)]
    for v in variants:
        if v == 'scratch': continue
        lines.append(f'| {v} - scratch | ' + ' | '.join(cell(paired(v, m)) for m in metrics) + ' |')
    people_rows = []
    for person in people:
        sub = [r for r in rows if r['person'] == person]
        people_rows.append(f'| {person} | ' + ' | '.join(cell(values(sub, v, 'psnr')) for v in variants) + ' | '
                           + ' | '.join(cell(values(sub, v, 'lip_open_corr_jaw' if any(values(rows, v, 'lip_open_corr_jaw') for v in variants) else 'lip_open_corr_truth')) for v in variants) + ' |')
    lip = 'lip_open_corr_jaw' if any(values(rows, v, 'lip_open_corr_jaw') for v in variants) else 'lip_open_corr_truth'
    lines += ['', f'| person | ' + ' | '.join(f'psnr {v}' for v in variants) + ' | ' + ' | '.join(f'{lip} {v}' for v in variants) + ' |',
              '|---|' + '---:|' * (2 * len(variants))] + people_rows
    checks = []
    def mean(v, m):
        x = values(rows, v, m); return statistics.mean(x) if x else None
    for m in ('psnr', 'lip_open_corr_jaw', 'lip_open_corr_truth', 'lmd'):
        a, s, t = mean('adapted', m), mean('scratch', m), mean('adapted_third', m)
        if a is None or s is None: continue
        better = (lambda x, y: x < y) if m == 'lmd' else (lambda x, y: x > y)
        line = f'- {m}: adapted {a:.3f} vs scratch {s:.3f}: {"adapted better" if better(a, s) else "adapted NOT better"}'
        if t is not None:
            ok = not better(s, t)
            line += f'; adapted with a third of the budget {t:.3f}: {"at least as good as" if ok else "worse than"} scratch'
        # paired per person and seed
        pairs = [(float(x[m]), float(y[m])) for x in rows for y in rows if x['variant'] == 'adapted' and y['variant'] == 'scratch'
                 and x['person'] == y['person'] and x['seed'] == y['seed'] and x.get(m) not in ('', 'None') and y.get(m) not in ('', 'None')]
        if pairs: line += f' (paired: adapted better in {sum(better(x, y) for x, y in pairs)} of {len(pairs)})'
        checks.append(line)
    return '\n'.join(lines + [''] + checks)


def figure(grids: list[str], path: Path) -> Path:
    "PSNR and lip-sync per person and variant, every seed a dot over its mean bar (matplotlib PNG)."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [(g, m) for g in grids if read(g) for m in ('psnr', 'lip_open_corr_jaw' if g == 'synthetic' else 'lip_open_corr_truth')]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    colours = dict(scratch='#999999', scratch_third='#cccccc', adapted_third_unscaled='#d9e6f2', adapted_third='#8fb4d9', adapted='#1f5fa8')
    for ax, (g, m) in zip(axes[0], panels):
        rows = read(g); people = sorted({r['person'] for r in rows})
        variants = [v for v in ORDER if any(r['variant'] == v for r in rows)]
        for pi, person in enumerate(people):
            for vi, v in enumerate(variants):
                x = pi * (len(variants) + 1) + vi
                ys = values([r for r in rows if r['person'] == person], v, m)
                if not ys: continue
                ax.bar(x, statistics.mean(ys), color=colours[v], label=v if pi == 0 else None)
                ax.plot([x] * len(ys), ys, 'k.', ms=4)
        ax.set_xticks([pi * (len(variants) + 1) + (len(variants) - 1) / 2 for pi in range(len(people))], people)
        ax.set_title(f'{g}: {m}', fontsize=9)
        lo = min(values(rows, v, m)[0] for v in variants if values(rows, v, m))
        if m == 'psnr': ax.set_ylim(min(min(values(rows, v, m)) for v in variants if values(rows, v, m)) - 2, None)
        else: ax.set_ylim(min(0, lo), 1)
    axes[0][0].legend(fontsize=7, loc='lower left')
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('grids', nargs='*', default=['synthetic', 'german'])
    ap.add_argument('--figure', type=Path, default=None, help='also write a PNG of PSNR and lip sync per person and variant')
    a = ap.parse_args(argv)
    print('\n\n'.join(summary(g) for g in a.grids))
    if a.figure: print(figure(a.grids, a.figure))
    return 0


if __name__ == '__main__': sys.exit(main())

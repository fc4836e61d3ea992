"""The documentation site's Results chapter: markdown pages summarized from the committed CSVs of
`nbs/experiments/results/` (used by tools/docs_pages.py; the numbers are the ones committed, nothing is rerun)."""
from __future__ import annotations
import math
from pathlib import Path

import pandas as pd

# the metrics shown, in order, with the direction that is better (the protocol's own columns)
METRICS = {'psnr': 'higher', 'psnr_face': 'higher', 'ssim_face': 'higher', 'ssim': 'higher', 'lmd': 'lower',
           'aue_l': 'lower', 'lip_corr': 'higher', 'lip_open_corr_truth': 'higher', 'sync_conf': 'higher',
           'train_seconds': 'lower'}

def _cell(v) -> str:
    if isinstance(v, float):
        return '' if math.isnan(v) else f'{v:.4g}'
    return str(v).replace('|', '\\|')

def md_table(df: pd.DataFrame) -> str:
    "A pipe table of `df` (no index), numbers to 4 significant digits."
    head = '| ' + ' | '.join(map(str, df.columns)) + ' |'
    rule = '|' + '---|' * len(df.columns)
    rows = ['| ' + ' | '.join(_cell(v) for v in row) + ' |' for row in df.itertuples(index=False)]
    return '\n'.join([head, rule, *rows])

def summarize(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    "Mean of each metric over seeds for each group of `by`, with the number of runs as `n`."
    metrics = [m for m in METRICS if m in df and df[m].notna().any()]
    g = df.groupby(by, sort=False)
    out = g[metrics].mean().round(4)
    out.insert(0, 'n', g.size())
    return out.reset_index()

def _legend(df: pd.DataFrame) -> str:
    shown = [m for m in METRICS if m in df.columns]
    return 'Means over seeds; ' + ', '.join(f'`{m}` {METRICS[m]} is better' for m in shown) + '.'

def protocol_page(name: str, results: Path) -> str:
    df = pd.read_csv(results / f'{name}.csv')
    done = df[df.status == 'done'] if 'status' in df else df
    parts = [f'# Protocol `{name.removeprefix("protocol_")}`', '',
             f'Generated from `nbs/experiments/results/{name}.csv` ({len(done)} finished runs of {len(df)}) when the site '
             'was built. The notebook [The evaluation protocol: report](../experiments/report.ipynb) reads the same files.', '']
    claims = results / f'{name}_claims.md'
    if claims.exists():
        parts += ['## Claims', '', 'Each claim pairs runs that differ in one thing (same person, seed and budget).', '',
                  claims.read_text(encoding='utf-8').strip(), '']
    summary = summarize(done, ['table', 'source', 'seconds', 'variant'])
    parts += ['## Runs per table and variant', '', _legend(summary), '', md_table(summary), '']
    gap = results / f'{name}_lipgap.csv'
    if gap.exists():
        g = pd.read_csv(gap)
        g['abs_gap'] = (g.render - g.truth).abs()
        lg = g.groupby(['table', 'variant'], sort=False).agg(frames=('frame', 'size'), mean_abs_gap=('abs_gap', 'mean'),
                                                              render=('render', 'mean'), truth=('truth', 'mean')).round(4)
        parts += ['## Lip opening against the truth video', '', f'From `{gap.name}`: per frame, the rendered and the true '
                  'lip opening; `mean_abs_gap` lower is better.', '', md_table(lg.reset_index()), '']
    return '\n'.join(parts)

def lipsync_page(results: Path) -> str:
    df = pd.read_csv(results / 'lipsync_real.csv')
    done = df[df.status == 'done']
    per_person = summarize(done, ['person', 'variant'])
    per_variant = summarize(done, ['variant'])
    return '\n'.join([
        '# Lip sync on real people', '',
        f'Generated from `nbs/experiments/results/lipsync_real.csv` ({len(done)} finished runs of {len(df)}) when the site '
        'was built: adaptation on 5 s of three '
        'real people, from the speech-encoder prior, from the log-mel prior, and from scratch. The notebook '
        '[Lip sync on real people](../experiments/lipsync_results.ipynb) discusses them.', '',
        '## Per variant', '', _legend(per_variant), '', md_table(per_variant), '',
        '## Per person and variant', '', md_table(per_person), ''])

def adapt_page(results: Path) -> str:
    parts = ['# Adaptation grids', '',
             'Generated from `nbs/experiments/results/adapt_*.csv` when the site was built: a prior adapted to a person '
             'against the same budget from scratch. The notebook [Results of `instag adapt`](../experiments/adapt_results.ipynb) '
             'discusses them.', '']
    for path in sorted(results.glob('adapt_*.csv')):
        df = pd.read_csv(path)
        s = summarize(df, ['person', 'variant'])
        parts += [f'## `{path.name}`', '', _legend(s), '', md_table(s), '']
    return '\n'.join(parts)

def result_pages(results: Path, out: Path) -> list:
    "Write the Results pages into `out`; their nav entries."
    out.mkdir(parents=True, exist_ok=True)
    pages = {}
    for csv in sorted(results.glob('protocol_*.csv')):
        if csv.stem.endswith('_lipgap'): continue
        pages[f'Protocol {csv.stem.removeprefix("protocol_")}'] = (f'{csv.stem}.md', protocol_page(csv.stem, results))
    if (results / 'lipsync_real.csv').exists(): pages['Lip sync on real people'] = ('lipsync_real.md', lipsync_page(results))
    if any(results.glob('adapt_*.csv')): pages['Adaptation grids'] = ('adapt.md', adapt_page(results))
    for name, text in pages.values(): (out / name).write_text(text, encoding='utf-8')
    return [{title: f'results/{name}'} for title, (name, _) in pages.items()]

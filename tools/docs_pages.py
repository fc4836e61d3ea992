#!/usr/bin/env python
"""Stage the documentation site's sources in `_proc/docs/` and write `_proc/mkdocs.yml` for `tools/docs.sh`.

What it writes, all from files in the repository (nothing is downloaded):
- every notebook of `nbs/` and `nbs/experiments/`, with nbdev's `#| hide` cells dropped and `#|` directives removed.
  A chapter notebook is taken from its executed copy (`tools/docs_execute.py`, which `tools/docs.sh` runs first) when that
  copy is current, so its page shows outputs and figures; the results notebooks show the outputs committed with them;
- `assets/plotly.min.js`, from the installed plotly package: the interactive figures' one script, served by the site;
- `api/<module>.md`: one page per module of `instag/`, rendered from its docstrings by mkdocstrings;
- `jobs/<job>.md`: one page per `instag` command, with its `--help` captured now (what `python -m instag <job> --help` prints);
- `results/*.md`: tables summarized from the committed CSVs of `nbs/experiments/results/`;
- the navigation, grouped by chapter (the notebook numbering of CONTRIBUTING.md).

Usage: python tools/docs_pages.py SITE_DIR   (then: mkdocs build -f _proc/mkdocs.yml)
"""
from __future__ import annotations
import json, os, re, shutil, subprocess, sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NBS, STAGE = ROOT / 'nbs', ROOT / '_proc' / 'docs'
RESULTS = NBS / 'experiments' / 'results'

EVALUATION = (45.1, 45.2, 45.3)  # 45a evaluate, 45b metrics, 45c lip sync
# chapters in reading order: (title, rule on the notebook's number); a notebook goes to the first chapter that takes it
CHAPTERS = [
    ('Core', lambda n: n < 10),
    ('Rendering', lambda n: 10 <= n < 20),
    ('Data and prepare', lambda n: 20 <= n < 30),
    ('Synthetic corpus', lambda n: 30 <= n < 40),
    ('Synthesizer and training', lambda n: 40 <= n < 48 and n not in EVALUATION),
    ('Pre-training and adaptation', lambda n: 48 <= n < 51),
    ('Evaluation and experiments', lambda n: n in EVALUATION or 51 <= n < 60),
    ('Viewer and widgets', lambda n: 60 <= n < 70),
    ('Command line', lambda n: n >= 90),
]
METHOD_NB = '05_method.ipynb'             # its own entry after the home page
HAND_WRITTEN = {'_render_cpu': '10_render.ipynb'}  # plain modules and the chapter that explains them
PLOTLY_JS = 'assets/plotly.min.js'      # the figures' script, from the installed package: the site loads nothing remote
HELP_COLUMNS = '100'                      # argparse wraps --help at this width on every machine

def number(name: str) -> float:
    "`45a_evaluate.ipynb` -> 45.1: the chapter number, a letter as a tenth."
    m = re.match(r'(\d+)([a-z]?)_', name)
    return int(m[1]) + (ord(m[2]) - ord('a') + 1) / 10 if m and m[2] else int(m[1]) if m else -1

def chapter(name: str) -> str:
    return next(title for title, takes in CHAPTERS if takes(number(name)))

def title_of(nb_path: Path) -> str:
    "The notebook's first `# Title`, else its file name."
    for cell in json.loads(nb_path.read_text(encoding='utf-8'))['cells']:
        if cell['cell_type'] == 'markdown':
            m = re.search(r'^# (.+)$', ''.join(cell['source']), re.M)
            if m: return m[1].strip()
    return nb_path.stem

def stage_notebook(src: Path, dst: Path):
    "Copy a notebook without its `#| hide` and `#| default_exp` cells and without `#|` directive lines."
    nb = json.loads(src.read_text(encoding='utf-8'))
    cells = []
    for cell in nb['cells']:
        text = ''.join(cell['source'])
        if cell['cell_type'] == 'code':
            directives = [l for l in text.splitlines() if l.startswith('#|')]
            if any(re.match(r'#\|\s*(hide|default_exp)\b', l) for l in directives): continue
            text = '\n'.join(l for l in text.splitlines() if not l.startswith('#|')).strip('\n')
            if not text and not cell.get('outputs'): continue
            cell['source'] = text
        cells.append(cell)
    nb['cells'] = cells
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding='utf-8')

def executed_copy(src: Path, lib: str) -> Path:
    "The executed copy of a chapter notebook when it was made from this notebook and this library, else the notebook."
    copy = EXECUTED / src.name
    key = copy.with_suffix('.key')
    return copy if copy.exists() and key.exists() and key.read_text() == key_of(src, lib) else src

def stage_notebooks() -> dict[str, list]:
    "Every notebook staged; the nav entries {chapter: [{title: path}]} in file order."
    nav: dict[str, list] = {title: [] for title, _ in CHAPTERS}
    lib = library_key()
    for src in sorted(NBS.glob('*.ipynb')):
        stage_notebook(executed_copy(src, lib), STAGE / src.name)
        if src.name in ('index.ipynb', METHOD_NB): continue
        nav[chapter(src.name)].append({title_of(src): src.name})
    experiments = [{title_of(src): f'experiments/{src.name}'} for src in sorted((NBS / 'experiments').glob('*.ipynb'))]
    for src in sorted((NBS / 'experiments').glob('*.ipynb')): stage_notebook(src, STAGE / 'experiments' / src.name)
    nav['Evaluation and experiments'] += experiments
    shutil.copytree(NBS / 'images', STAGE / 'images')
    import plotly
    (STAGE / 'assets').mkdir(exist_ok=True)
    shutil.copy(Path(plotly.__file__).parent / 'package_data' / 'plotly.min.js', STAGE / PLOTLY_JS)
    return nav

def modules() -> list[tuple[str, str | None]]:
    "(dotted module name, the notebook it is generated from or explained in) for every module of `instag/`."
    out = []
    for path in sorted((ROOT / 'instag').rglob('*.py')):
        rel = path.relative_to(ROOT).with_suffix('')
        if rel.name in ('__init__', '__main__', '_modidx'): continue
        m = re.search(r'File to edit: [./]*nbs/([\w./-]+\.ipynb)', path.read_text(encoding='utf-8')[:2000])
        out.append(('.'.join(rel.parts), m[1] if m else HAND_WRITTEN.get(rel.name)))
    return out

def api_pages() -> dict[str, list]:
    nav: dict[str, list] = {title: [] for title, _ in CHAPTERS}
    for name, nb in modules():
        link = f'Explained in the chapter [{title_of(NBS / nb)}](../{nb}).\n\n' if nb else ''
        page = STAGE / 'api' / f'{name}.md'
        page.parent.mkdir(parents=True, exist_ok=True)
        # methods added with fastcore's @patch live outside their class in the source: those pages import the module
        source = (ROOT / Path(*name.split('.'))).with_suffix('.py').read_text(encoding='utf-8')
        options = '    options:\n      force_inspection: true\n' if '\n@patch' in source else ''
        page.write_text(f'# `{name}`\n\n{link}::: {name}\n{options}', encoding='utf-8')
        nav[chapter(nb) if nb else 'Core'].append({name: f'api/{name}.md'})
    return nav

HELP_SCRIPT = """
import contextlib, io, json, sys
from instag.cli import COMMANDS, main
helps = {}
for job in COMMANDS:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try: rc = main([job, '--help'])
        except SystemExit as e: rc = e.code or 0
    helps[job] = (rc, out.getvalue())
print(json.dumps(helps))
"""

def capture_helps() -> dict[str, str]:
    "`instag <job> --help` of every job, by the CLI's own `main` (one process: torch is imported once, not per job)."
    env = dict(os.environ, COLUMNS=HELP_COLUMNS, MPLBACKEND='Agg', PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, '-c', HELP_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0: sys.exit(f'capturing `instag <job> --help` failed: {r.stderr.strip()[-1000:]}')
    helps = json.loads(r.stdout.strip().splitlines()[-1])
    failed = [job for job, (rc, _) in helps.items() if rc != 0]
    if failed: sys.exit(f'`instag {failed[0]} --help` exited non-zero: run it to see why')
    return {job: text.rstrip() for job, (_, text) in helps.items()}

def job_pages() -> list:
    sys.path.insert(0, str(ROOT))
    from instag.cli import COMMANDS
    owners = dict(modules())
    helps = capture_helps()
    nav, rows = [], []
    for job, (target, summary) in COMMANDS.items():
        module, function = target.split(':')
        nb = owners.get(module)
        lines = [f'# `instag {job}`', '', f'{summary[0].upper()}{summary[1:]}.', '', '## Behind it', '',
                 f'- the library function `{target.replace(":", ".")}`, in the module [`{module}`](../api/{module}.md)']
        if nb: lines.append(f'- the chapter [{title_of(NBS / nb)}](../{nb})')
        template = NBS / 'experiments' / f'{job}.ipynb'
        if template.exists():
            lines.append(f'- the papermill notebook [{title_of(template)}](../experiments/{job}.ipynb), which calls the same functions')
        lines += ['', f'## `instag {job} --help`', '', '```text', helps[job], '```', '', '## API', '', f'::: {module}.{function}', '']
        (STAGE / 'jobs').mkdir(parents=True, exist_ok=True)
        (STAGE / 'jobs' / f'{job}.md').write_text('\n'.join(lines), encoding='utf-8')
        nav.append({f'instag {job}': f'jobs/{job}.md'})
        rows.append(f'| [`instag {job}`]({job}.md) | {summary} |')
    index = ['# Jobs', '', 'Every job is one `instag <command>`; the CLI, the papermill notebooks and the library call the '
             'same functions. Each page shows the command\'s `--help` as this site was built.', '',
             '| command | what it does |', '|---|---|', *rows, '']
    (STAGE / 'jobs' / 'index.md').write_text('\n'.join(index), encoding='utf-8')
    return [{'Jobs': 'jobs/index.md'}, *nav]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_results import result_pages  # noqa: E402  (beside this file)
from docs_execute import OUT as EXECUTED, key_of, library_key  # noqa: E402

def write_config(site_dir: Path, nav_nbs: dict, nav_api: dict, nav_jobs: list, nav_results: list):
    cfg = yaml.safe_load((ROOT / 'mkdocs.yml').read_text(encoding='utf-8'))
    nav = [{'Home': 'index.ipynb'}, {'Method': METHOD_NB}] if (NBS / METHOD_NB).exists() else [{'Home': 'index.ipynb'}]
    nav += [{title: items} for title, items in nav_nbs.items() if items]
    nav += [{'Jobs': nav_jobs}, {'Results': nav_results},
            {'API': [{title: items} for title, items in nav_api.items() if items]}]
    cfg['theme']['custom_dir'] = str(ROOT / 'tools' / 'docs_theme')  # loads PLOTLY_JS in every page's head
    cfg.update(docs_dir=str(STAGE), site_dir=str(site_dir.resolve()), nav=nav)
    (ROOT / '_proc' / 'mkdocs.yml').write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding='utf-8')

def main(site_dir: str):
    if STAGE.exists(): shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    nav_nbs = stage_notebooks()
    nav_api, nav_jobs = api_pages(), job_pages()
    nav_results = result_pages(RESULTS, STAGE / 'results')
    write_config(Path(site_dir), nav_nbs, nav_api, nav_jobs, nav_results)

if __name__ == '__main__':
    if len(sys.argv) != 2: sys.exit(__doc__)
    main(sys.argv[1])

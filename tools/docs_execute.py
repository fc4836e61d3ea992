#!/usr/bin/env python
"""Execute the chapter notebooks of `nbs/` for the documentation site, so that their pages show outputs and figures.

The notebooks are committed without outputs (a diff of a notebook is then a diff of its code and prose). For the site
each one runs in a Jupyter kernel, as a reader would run it, and the executed copy goes to `_proc/executed/<name>`:
- cells that `nbdev_test` skips by default (`#| notest`, `#| slow`, `#| cuda`, `#| eval: false`) are left unexecuted;
- interactive plotly figures become an HTML `<div>` drawn by the one plotly.js the site ships (`assets/plotly.min.js`),
  so that a page loads nothing from another host;
- a copy is reused while its key holds: the notebook's bytes, the sources of `instag/` and this file. A build after
  editing one notebook runs that notebook only; a build after editing the library runs them all again.
A notebook that raises fails the build, naming the notebook and the cell.

Usage: python tools/docs_execute.py [--workers N] [NOTEBOOK ...]    (default: every nbs/*.ipynb, 2 workers)
"""
from __future__ import annotations
import argparse, hashlib, json, os, re, subprocess, sys, time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, OUT = ROOT / 'nbs', ROOT / '_proc' / 'executed'
SKIP_FLAGS = ('notest', 'slow', 'cuda')   # settings.ini tst_flags: what nbdev_test leaves out unless asked
CELL_TIMEOUT_S = 600
PLOTLY_MIME = 'application/vnd.plotly.v1+json'

def skipped(source: str) -> bool:
    "Whether `nbdev_test` leaves this cell out by default: a test flag or `#| eval: false`."
    for line in source.splitlines():
        if not line.startswith('#|'): continue
        words = re.sub(r'^#\|\s*', '', line).replace(':', ' ').split()
        if any(w in SKIP_FLAGS for w in words) or words[:2] == ['eval', 'false']: return True
    return False

def library_key() -> str:
    "One hash of every source file of `instag/` and of this script: the outputs depend on both."
    h = hashlib.sha256(Path(__file__).read_bytes())
    for p in sorted((ROOT / 'instag').rglob('*')):
        if p.is_file() and p.suffix in ('.py', '.cpp', '.h', '.yaml', '.json', '.md'):
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()

def key_of(nb_path: Path, lib: str) -> str:
    return hashlib.sha256(nb_path.read_bytes() + lib.encode()).hexdigest()

def plotly_to_html(output: dict) -> None:
    "Replace an interactive plotly figure's JSON by the `<div>` that the site's plotly.js draws."
    import plotly.io as pio
    fig = pio.from_json(json.dumps(output['data'][PLOTLY_MIME]), skip_invalid=True)
    html = pio.to_html(fig, include_plotlyjs=False, full_html=False, config={'displaylogo': False})
    output['data'] = {'text/html': html, 'text/plain': output['data'].get('text/plain', '')}

def execute(nb_path: Path, dst: Path) -> float:
    "Run one notebook in a fresh kernel (cwd: its folder), skipping the flagged cells; write the executed copy."
    import nbformat
    from nbclient import NotebookClient
    os.environ.pop('MPLBACKEND', None)      # the kernel's inline backend draws the figures into the outputs
    os.environ['PYTHONPATH'] = str(ROOT)
    start = time.monotonic()
    nb = nbformat.read(nb_path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3',
                            resources={'metadata': {'path': str(nb_path.parent)}})
    with client.setup_kernel(stderr=subprocess.DEVNULL):  # (the kernel's start-up notices; errors come as outputs)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != 'code' or skipped(cell.source): continue
            client.execute_cell(cell, index)
    for cell in nb.cells:
        for output in cell.get('outputs', []):
            if PLOTLY_MIME in output.get('data', {}): plotly_to_html(output)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix('.partial')
    nbformat.write(nb, tmp)
    os.replace(tmp, dst)
    return time.monotonic() - start

def _run(nb_path: str, dst: str, key: str) -> tuple[str, float]:
    seconds = execute(Path(nb_path), Path(dst))
    Path(dst).with_suffix('.key').write_text(key)
    return nb_path, seconds

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebooks', nargs='*', type=Path, help='default: every nbs/*.ipynb')
    ap.add_argument('--workers', type=int, default=2)
    args = ap.parse_args(argv)
    notebooks = [p.resolve() for p in args.notebooks] or sorted(NBS.glob('*.ipynb'))
    lib = library_key()
    todo = []
    for nb in notebooks:
        dst, key = OUT / nb.name, key_of(nb, lib)
        keyfile = dst.with_suffix('.key')
        if dst.exists() and keyfile.exists() and keyfile.read_text() == key: continue
        todo.append((str(nb), str(dst), key))
    print(f'executing {len(todo)} of {len(notebooks)} notebooks for the site ({len(notebooks) - len(todo)} unchanged)')
    failed = []
    start = time.monotonic()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = {pool.submit(_run, *job): job[0] for job in todo}
        for future in as_completed(futures):
            try:
                name, seconds = future.result()
                print(f'  {Path(name).name}: {seconds:.0f} s', flush=True)
            except Exception as e:
                name = Path(futures[future]).name
                failed.append(name)
                print(f'{name} failed while executing for the site:\n{str(e)[-3000:]}', file=sys.stderr)
    if todo: print(f'executed in {time.monotonic() - start:.0f} s')
    if failed:
        print(f'{len(failed)} notebook(s) failed: {", ".join(sorted(failed))}; run them in Jupyter to see why', file=sys.stderr)
        return 1
    return 0

if __name__ == '__main__':
    sys.exit(main())

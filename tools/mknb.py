#!/usr/bin/env python
"""Write a notebook from a percent-format script (authoring aid; the .ipynb is the source of truth).

Usage: python tools/mknb.py SCRIPT.py nbs/NN_name.ipynb

Cells start with a line `# %%` (code) or `# %% [markdown]` (markdown; each line's leading `# ` is stripped).
A code cell that starts with `# %% tags=["parameters"]` gets the papermill `parameters` tag.
Run `nbdev_clean` afterwards (and `nbdev_export` for exported notebooks).
"""
import json, re, sys
from pathlib import Path

def parse(text: str) -> list[dict]:
    cells, kind, tags, lines = [], None, [], []
    def flush():
        if kind is None: return
        while lines and not lines[-1].strip(): lines.pop()
        while lines and not lines[0].strip(): lines.pop(0)
        if kind == 'markdown': src = [re.sub(r'^# ?', '', l) for l in lines]
        else: src = lines
        cell = {'cell_type': kind, 'metadata': ({'tags': tags} if tags else {}), 'source': '\n'.join(src)}
        if kind == 'code': cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    for line in text.splitlines():
        m = re.match(r'^# %%( \[markdown\])?(.*)$', line)
        if m:
            flush(); lines = []
            kind = 'markdown' if m.group(1) else 'code'
            t = re.search(r'tags=(\[.*\])', m.group(2) or '')
            tags = json.loads(t.group(1)) if t else []
        elif kind is not None: lines.append(line)
    flush()
    return cells

def main(src: str, dst: str):
    cells = parse(Path(src).read_text())
    for c in cells:
        s = c['source'].split('\n')
        c['source'] = [l + '\n' for l in s[:-1]] + [s[-1]]
    nb = {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    Path(dst).write_text(json.dumps(nb, indent=1) + '\n')

if __name__ == '__main__': main(*sys.argv[1:])

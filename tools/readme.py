#!/usr/bin/env python
"""Write README.md from nbs/index.ipynb (what `nbdev_readme` does, without needing quarto, which pip cannot install here).

Usage: python tools/readme.py [--check]   (--check exits 1 if README.md is out of date)
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def render() -> str:
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    parts = ['<!-- generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file -->']
    for cell in nb['cells']:
        src = ''.join(cell['source']).strip()
        if not src or src.startswith('#|'): continue
        parts.append(src if cell['cell_type'] == 'markdown' else f'```python\n{src}\n```')
    return '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text = render(); path = ROOT / 'README.md'
    if '--check' in sys.argv:
        if not path.exists() or path.read_text() != text:
            sys.exit('README.md is out of date with nbs/index.ipynb: run python tools/readme.py')
    else: path.write_text(text)

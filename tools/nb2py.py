#!/usr/bin/env python
"""Write a percent-format script from a notebook: the reverse of tools/mknb.py (authoring aid; outputs are dropped).

Usage: python tools/nb2py.py nbs/NN_name.ipynb SCRIPT.py
Edit the script, then `python tools/mknb.py SCRIPT.py nbs/NN_name.ipynb && nbdev_clean && nbdev_export`.
"""
import json, sys
from pathlib import Path

def to_script(nb: dict) -> str:
    out = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown':
            out.append('# %% [markdown]\n' + '\n'.join(('# ' + l) if l else '#' for l in src.split('\n')))
        else:
            tags = c.get('metadata', {}).get('tags')
            out.append('# %%' + (f' tags={json.dumps(tags)}' if tags else '') + '\n' + src)
    return '\n\n'.join(out) + '\n'

if __name__ == '__main__':
    src, dst = sys.argv[1:3]
    Path(dst).write_text(to_script(json.loads(Path(src).read_text())))

"""A headless-Chromium screenshot of JupyterLab showing the deformation explorer on a finished run (for the README).

Usage: .venv/bin/python tools/lab_screenshot.py RUN [--out nbs/images/explorer_lab.png] [--frame 40]
Serves a temporary notebook on 127.0.0.1 with a token, runs it in the page, and keeps the picture once the head is drawn.
"""
import argparse, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import nbformat
    from PIL import Image
    from instag.view.screenshot import lab_screenshot
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('run'); ap.add_argument('--out', default=str(ROOT / 'nbs' / 'images' / 'explorer_lab.png'))
    ap.add_argument('--frame', type=int, default=40)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        nb = nbformat.v4.new_notebook()
        nb.metadata['kernelspec'] = dict(name='python3', display_name='Python 3 (ipykernel)', language='python')
        nb.cells = [nbformat.v4.new_markdown_cell('# Deformation explorer\nA finished adaptation run: frame, audio, motion parts, colouring by |d_mu|.'),
                    nbformat.v4.new_code_cell(f'from instag.widgets import DeformationExplorer\n'
                                              f'explorer = DeformationExplorer({str(Path(a.run).resolve())!r})\n'
                                              f'explorer.frame.value = {a.frame}\nexplorer')]
        nbformat.write(nb, Path(d) / 'explorer.ipynb')
        shot = lab_screenshot(Path(d) / 'explorer.ipynb', Path(d) / 'shot.png')
        img = Image.open(shot).convert('RGB')
        img.crop((0, 0, img.width, min(img.height, 720))).save(a.out, optimize=True)
    print(a.out)
    return 0


if __name__ == '__main__': sys.exit(main())

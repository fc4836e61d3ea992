"""The documentation site: `bash tools/docs.sh` builds it offline (once for this module), every chapter, job, API and
results page is there, and headless Chromium shows the home page and the method chapter as a reader would see them.

Chromium (Debian's `chromium`) is needed for the browser checks: they skip without it, unless INSTAG_REQUIRE_CHROMIUM=1
(CI), where its absence fails. INSTAG_WRITE_SCREENSHOT=1 also writes nbs/images/docs_home.png."""
import functools, http.server, os, re, subprocess, sys, threading, time
from pathlib import Path

import pytest

from helpers import chromium
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from docs_pages import CHAPTERS, chapter, modules  # noqa: E402
from docs_execute import skipped  # noqa: E402

from instag.cli import COMMANDS  # noqa: E402
from instag.view.screenshot import CHROMIUM_FLAGS, chromium_screenshot  # noqa: E402

BUILD_LIMIT_S = 420  # the build takes 2.5 minutes cold on 2 cores (it executes every chapter); past 7 something is wrong

@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('docs') / 'site'
    start = time.monotonic()
    r = subprocess.run(['bash', 'tools/docs.sh', str(out)], cwd=ROOT, capture_output=True, text=True, timeout=BUILD_LIMIT_S)
    assert r.returncode == 0, f'tools/docs.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    print(f'docs built in {time.monotonic() - start:.0f} s')
    return out

def _notebooks() -> list[Path]:
    return sorted((ROOT / 'nbs').glob('*.ipynb')) + sorted((ROOT / 'nbs' / 'experiments').glob('*.ipynb'))

def test_chapters():
    "Notebooks go to their chapter by number; every chapter notebook and every module has a chapter."
    test = {'00_core.ipynb': 'Core', '10a_sh.ipynb': 'Rendering', '23e_speech_encoder.ipynb': 'Data and prepare',
            '31a_synth_pose.ipynb': 'Synthetic corpus', '44b_trainer.ipynb': 'Synthesizer and training',
            '45a_evaluate.ipynb': 'Evaluation and experiments', '45c_lipsync.ipynb': 'Evaluation and experiments',
            '49b_distributed.ipynb': 'Pre-training and adaptation', '50_adapt.ipynb': 'Pre-training and adaptation',
            '52_report.ipynb': 'Evaluation and experiments', '61_widgets.ipynb': 'Viewer and widgets', '90_cli.ipynb': 'Command line'}
    for name, title in test.items(): assert chapter(name) == title, name
    titles = {t for t, _ in CHAPTERS}
    for nb in (ROOT / 'nbs').glob('[0-9]*.ipynb'): assert chapter(nb.name) in titles
    assert all(nb for _, nb in modules()), 'a module with no chapter: name its notebook in docs_pages.HAND_WRITTEN'

def test_skipped_cells():
    "The site runs what nbdev_test runs by default: cells flagged slow, notest, cuda or `eval: false` are left out."
    for source in ('#| slow\ntrain()', '#| notest\nx', '#|cuda\nx', '#| eval: false\nx', '#| export\n#| slow\nx'):
        assert skipped(source), source
    for source in ('#| export\ndef f(): pass', '#| hide\nimport slow', 'x = 1  #| slow', '#| eval: true\nx'):
        assert not skipped(source), source

def test_chapter_outputs(site):
    "Chapter pages show what their notebooks print and draw, executed for the site (the notebooks carry no outputs)."
    assert not any(c.get('outputs') for c in __import__('json').loads((ROOT / 'nbs' / '10_render.ipynb').read_text())['cells'])
    assert re.search(r'<img[^>]+src="data:image/png;base64,', (site / '10_render.html').read_text()), '10_render has no figure'
    assert 'CPU threads' in (site / '03_doctor.html').read_text()       # the doctor's table, as printed
    viewer = (site / '60_viewer.html').read_text()
    assert 'plotly-graph-div' in viewer and 'assets/plotly.min.js' in viewer
    assert (site / 'assets' / 'plotly.min.js').stat().st_size > 1_000_000

def test_site_pages(site):
    "A page per notebook, job (with its --help), module and results CSV; the nav names them; nothing points at ../shared."
    for nb in _notebooks():
        page = site / nb.relative_to(ROOT / 'nbs').with_suffix('.html')
        assert page.exists(), f'no page for {nb.name}'
    method = (site / '05_method.html').read_text()
    assert 'arXiv:2502.20387' in method and 'Identity-free pre-training' in method
    for job in COMMANDS:
        text = (site / 'jobs' / f'{job}.html').read_text()
        assert f'usage: instag {job}' in text, f'jobs/{job}.html has no --help'
        assert COMMANDS[job][0].split(':')[1] in text
    for name, _ in modules():
        text = (site / 'api' / f'{name}.html').read_text()
        assert 'doc-object' in text or 'doc-contents' in text, f'api/{name}.html has no docstrings'
    motion = (site / 'api' / 'instag.motion.html').read_text()   # methods added with @patch are listed with their class
    assert 'set_audio_stats' in motion and 'param_groups' in motion and 'per channel with the mean and std' in motion
    talking_head = (site / 'api' / 'instag.talking_head.html').read_text()
    assert 'face_mouth_hook' in talking_head and 'how far the face opens the mouth' in talking_head
    lipsync = (site / 'results' / 'lipsync_real.html').read_text()
    for person in ('german', 'vr_face4'): assert person in lipsync
    assert '<table>' in lipsync and 'encoder_prior' in lipsync
    claims = (site / 'results' / 'protocol_cpu.html').read_text()
    assert 'reproduces' in claims and '<table>' in claims
    home = (site / 'index.html').read_text()
    for title in ('The method', 'Rendering', 'Pre-training and adaptation', 'Jobs', 'Results', 'API'): assert title in home
    generated = list((ROOT / '_proc' / 'docs').rglob('*.md'))
    sources = [ROOT / 'mkdocs.yml', ROOT / 'nbs' / '05_method.ipynb',
               *(ROOT / 'tools' / n for n in ('docs.sh', 'docs_pages.py', 'docs_results.py'))]
    for p in generated + sources: assert '../shared' not in p.read_text(encoding='utf-8'), p

def test_offline(site):
    "The pages load no script or style from another host: the site reads the same without a network."
    for page in [site / 'index.html', site / '10_render.html', site / 'jobs' / 'adapt.html']:
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', page.read_text())
        assert not remote, f'{page.name} loads {remote[:3]}'

# the browser checks: Chromium reads the site through a local HTTP server, as a person would


@pytest.fixture(scope='module')
def served(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True); thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown(); server.server_close()

def _dom(exe: str, url: str, tmp_path: Path) -> str:
    r = subprocess.run([exe, *CHROMIUM_FLAGS, f'--user-data-dir={tmp_path / "profile"}', '--virtual-time-budget=5000',
                        '--dump-dom', url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout

def test_site_in_chromium(served, tmp_path):
    "Chromium renders the home page (title, navigation, README text) and the method chapter (its headings, a table)."
    exe = chromium('the browser checks of the docs site')
    home = _dom(exe, f'{served}/index.html', tmp_path)
    assert re.search(r'<title>[^<]*instag[^<]*</title>', home), home[:500]
    assert 'Gaussian' in home and 'md-nav' in home
    method = _dom(exe, f'{served}/05_method.html', tmp_path)
    for heading in ('The method', 'Identity-free pre-training', 'Motion-aligned adaptation', 'Geometry priors and losses',
                    'Where instag differs from the paper'):
        assert heading in method, heading
    assert 'instag.pretrain' in method and '<table>' in method
    viewer = _dom(exe, f'{served}/60_viewer.html', tmp_path)
    assert 'main-svg' in viewer, 'the plotly figure of the viewer chapter was not drawn (is assets/plotly.min.js served?)'
    job = _dom(exe, f'{served}/jobs/adapt.html', tmp_path)
    assert 'usage: instag adapt' in job
    shot = (ROOT / 'nbs' / 'images' / 'docs_home.png' if os.environ.get('INSTAG_WRITE_SCREENSHOT') == '1'
            else tmp_path / 'docs_home.png')
    chromium_screenshot(f'{served}/index.html', shot, width=1280, height=800, settle_s=2.0, timeout=60)
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one

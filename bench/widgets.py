"""What the JupyterLab training panel costs: training rate with the panel attached (default refresh) vs without.

Usage: .venv/bin/python bench/widgets.py [--quick] [--refresh 3.0] [--no-write]
Writes the section between `<!-- bench:widgets -->` and `<!-- /bench:widgets -->` of BENCHMARKS.md; the last line is
one JSON object (its_without, its_with, cost, refreshes). The face stage of the cpu preset at 256x256 (8000 + 800
Gaussians, densification off), stepped through the trainer's callbacks as `Trainer.fit` does, alternating without /
with the panel (A B A B) in one process; the panel refreshes its curves, status and render as in a notebook (no front end).
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))

from _sections import write_section  # noqa: E402
from train import make_trainer  # noqa: E402  (bench/train.py: the same 256x256 trainer)
from instag.example_data import write_example_dataset  # noqa: E402


def steps(t, n: int) -> float:
    "it/s of n iterations through the callbacks."
    w = time.perf_counter()
    for _ in range(n):
        t._call('before_step'); t.train_step(); t.step += 1; t._call('after_step')
    return n / (time.perf_counter() - w)


def main(argv=None) -> int:
    from instag.trainer import MetricsCallback
    from instag.widgets import TrainingPanel
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='fewer iterations (about 1 minute)')
    ap.add_argument('--refresh', type=float, default=3.0, help='panel refresh seconds (the default of TrainingPanel)')
    ap.add_argument('--no-write', action='store_true')
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    n = 60 if a.quick else 200
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_example_dataset(Path(tmp) / 'ds', frames=30, size=256, val_frames=5)
        t = make_trainer(root, 8000, 800, 2)
        t.callbacks = [MetricsCallback()]           # the history the panel plots
        bare = list(t.callbacks)
        panel = TrainingPanel(t, refresh_s=a.refresh)
        with_panel = list(t.callbacks)
        steps(t, 5)                                  # warm-up
        rates = {'without': [], 'with': []}
        for _ in range(2):
            t.callbacks = bare; rates['without'].append(steps(t, n))
            t.callbacks = with_panel; rates['with'].append(steps(t, n))
        refreshes = panel.updates
    load_after = os.getloadavg()[0]
    wo, wi = sum(rates['without']) / 2, sum(rates['with']) / 2
    cost = 1 - wi / wo
    result = dict(its_without=round(wo, 2), its_with=round(wi, 2), cost=round(cost, 4), refreshes=refreshes,
                  refresh_s=a.refresh, load_before=round(load, 2), load_after=round(load_after, 2), quick=a.quick)
    cmd = ('python bench/widgets.py ' + ' '.join(sys.argv[1:] if argv is None else argv)).strip()
    section = '\n'.join([
        '## The training panel\'s cost (`instag.widgets.TrainingPanel`)', '',
        f'`{cmd}` on {platform.processor() or platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}; '
        f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; load average {load:.1f} before, {load_after:.1f} after. Face stage '
        f'at 256x256 (8000 + 800 Gaussians), {n} iterations per measurement, without / with the panel alternating twice.', '',
        '| | training rate | |', '|---|---:|---|',
        f'| without the panel | {wo:.2f} it/s | {", ".join(f"{r:.2f}" for r in rates["without"])} |',
        f'| with the panel (refresh every {a.refresh:g} s: curves, status, render + PNG) | {wi:.2f} it/s | {", ".join(f"{r:.2f}" for r in rates["with"])} |',
        '', f'Cost: {100 * cost:.1f}% of the training rate ({refreshes} refreshes); the acceptance bound is 10%.'])
    print(section)
    if not a.no_write: write_section('widgets', section)
    print(json.dumps(result))
    return 0


if __name__ == '__main__': sys.exit(main())

"""Benchmark `instag prepare`: wall and CPU time per 10 s of 512x512 video on this machine (with the default speech
encoder when it is installed: its seconds are the `audio_encoder` stage).

Usage: .venv/bin/python bench/prepare.py [--seconds 10] [--size 512] [--clip PATH] [--write]

The clip (default: the first --seconds of ../shared/data/mimictalk_german_20s.mp4, re-encoded once into a temporary
folder) is prepared in this process; the reference in the same process is a plain decode of the same clip at 25 fps,
so the ratio says how many decodes one prepare costs on whatever machine runs it. --write puts the table into
BENCHMARKS.md between the <!-- bench:prepare --> markers.
"""
import argparse, json, os, re, resource, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instag.core import shared_data_dir
from instag.prepare.pipeline import PrepareConfig, prepare
from instag.video import iter_frames, probe_video

BUDGET_S = 60.0  # the budget: wall seconds per 10 s of 512x512 video on the 2-core machine


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cut(src: Path, seconds: float, dst: Path) -> Path:
    import imageio_ffmpeg
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-v', 'error', '-y', '-i', str(src), '-t', str(seconds), '-c:v', 'libx264',
                    '-preset', 'veryfast', '-crf', '16', '-c:a', 'aac', str(dst)], check=True)
    return dst


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--seconds', type=float, default=10.0)
    ap.add_argument('--size', type=int, default=512)
    ap.add_argument('--clip', help='a video (default: the German clip from ../shared/data)')
    ap.add_argument('--write', action='store_true', help='update BENCHMARKS.md')
    a = ap.parse_args(argv)
    src = Path(a.clip) if a.clip else (shared_data_dir() or Path('/nonexistent')) / 'mimictalk_german_20s.mp4'
    if not src.exists(): sys.exit(f'no clip: {src} is missing (put ../shared/data beside the checkout or pass --clip)')
    with tempfile.TemporaryDirectory() as d:
        clip = _cut(src, a.seconds, Path(d) / 'clip.mp4')
        info = probe_video(clip)
        t, c = time.perf_counter(), _cpu()
        n = sum(1 for _ in iter_frames(info))
        decode_wall, decode_cpu = time.perf_counter() - t, _cpu() - c
        load0 = os.getloadavg()[0]
        t, c = time.perf_counter(), _cpu()
        out = prepare(clip, Path(d) / 'ds', PrepareConfig(size=a.size), progress=False)
        wall, cpu = time.perf_counter() - t, _cpu() - c
        load1 = os.getloadavg()[0]
        meta = json.loads((out / 'metadata.json').read_text())
    per10 = wall * 10 / (n / 25)
    res = dict(clip=f'{src.name} first {a.seconds:g} s', frames=n, size=a.size, wall_s=round(wall, 1), cpu_s=round(cpu, 1),
               wall_per_10s=round(per10, 1), decode_wall_s=round(decode_wall, 2), ratio_to_decode=round(wall / decode_wall, 1),
               load_before=round(load0, 2), load_after=round(load1, 2), cores=os.cpu_count(), stages_s=meta['extra']['seconds'],
               audio_encoder=(meta['audio_features'].get('whisper') or {}).get('name', 'none'),
               face_found_ratio=meta['extra']['face_found_ratio'], jitter_deg=[meta['extra']['pose_jitter_raw_deg'], meta['extra']['pose_jitter_deg']])
    print(json.dumps(res))
    if a.write: _write(res, argv)
    return res


ROW_MARK = '<!-- run -->'


def _write(res: dict, argv) -> None:
    "Put this run at the top of the prepare table in BENCHMARKS.md (the last 6 runs are kept: load varies here)."
    cmd = ('.venv/bin/python bench/prepare.py ' + ' '.join(argv or sys.argv[1:])).strip()
    stages = ', '.join(f'{k} {v}' for k, v in res['stages_s'].items() if k != 'total')
    row = (f'| {time.strftime("%Y-%m-%d %H:%M")} | {res["clip"]} | {res["frames"]} | {res["size"]} | {res["wall_s"]} | {res["cpu_s"]} | '
           f'{res["wall_per_10s"]} | {res["load_before"]} / {res["load_after"]} | {res["ratio_to_decode"]}x | {stages} | '
           f'{100 * res["face_found_ratio"]:.1f}% | {res["jitter_deg"][0]} -> {res["jitter_deg"][1]} | {ROW_MARK}')
    path = ROOT / 'BENCHMARKS.md'
    text = path.read_text() if path.exists() else '# Benchmarks\n'
    pat = re.compile(r'<!-- bench:prepare -->.*?<!-- /bench:prepare -->', re.S)
    old = pat.search(text)
    rows = [l for l in (old.group(0).splitlines() if old else []) if l.endswith(ROW_MARK)]
    block = '\n'.join([
        '<!-- bench:prepare -->', '## prepare', '',
        f'Command: `{cmd}` on the {res["cores"]}-core machine. Budget: {BUDGET_S:g} s of wall time per 10 s of 512x512 video.',
        'The machine is shared, so wall time depends on the load average (other jobs); CPU seconds (this process, all threads)',
        'depend on it much less. Newest run first.', '',
        '| when | clip | frames | size | wall s | CPU s | wall per 10 s video | load before / after | wall / plain decode | stages (wall s) | face found | head jitter raw -> smoothed (deg/frame) | |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
        *([row] + rows)[:6], '<!-- /bench:prepare -->'])
    text = pat.sub(lambda m: block, text) if old else text.rstrip('\n') + '\n\n' + block + '\n'
    path.write_text(text)


if __name__ == '__main__':
    main()

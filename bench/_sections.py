"""The one writer of BENCHMARKS.md sections: each bench script owns the text between its markers."""
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / 'BENCHMARKS.md'


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    "Replace (or append) the text between `<!-- bench:name -->` and `<!-- /bench:name -->`, keeping the rest."
    start, end = f'<!-- bench:{name} -->', f'<!-- /bench:{name} -->'
    text = path.read_text() if path.exists() else '# Benchmarks\n\nEach section is written by the `bench/` script it names.\n'
    block = f'{start}\n{body}\n{end}'
    pattern = re.compile(re.escape(start) + r'.*?' + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip('\n') + '\n\n' + block + '\n'
    path.write_text(text)

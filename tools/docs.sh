#!/usr/bin/env bash
# Build the documentation site into _docs/ (or the folder given), offline: the chapter notebooks executed (a copy per
# notebook under _proc/executed/, reused while the notebook and the library are unchanged), the results notebooks as committed,
# an API page per module from its docstrings, a page per `instag` job with its --help, the results tables from the
# committed CSVs. Generator: MkDocs + Material + mkdocs-jupyter + mkdocstrings (the `docs` extra, installed if missing).
# Usage: bash tools/docs.sh [SITE_DIR]        then open SITE_DIR/index.html through any static server, e.g.
#        python -m http.server -d _docs 8000
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=${1:-_docs}
PY=${INSTAG_DOCS_PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  [ -z "${INSTAG_DOCS_PYTHON:-}" ] || { echo "INSTAG_DOCS_PYTHON=$PY is not an executable Python"; exit 2; }
  bash tools/install.sh
fi
if ! "$PY" -c 'import mkdocs, material, mkdocs_jupyter, mkdocstrings_handlers.python' 2>/dev/null; then
  echo "installing the docs extra (mkdocs, mkdocs-material, mkdocs-jupyter, mkdocstrings-python)"
  "$PY" -m pip install -q -e ".[docs]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
fi
export NO_MKDOCS_2_WARNING=1 MPLBACKEND=Agg  # (the first: Material's notice about its successor)
"$PY" tools/docs_execute.py
"$PY" tools/docs_pages.py "$SITE"
# from _proc/: mkdocs-jupyter keeps its cache of converted notebooks in ./.cache, so it stays out of the work tree
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
(cd _proc && "$PY" -m mkdocs build -q -f mkdocs.yml)
test -f "$SITE/index.html" || { echo "the docs build wrote no $SITE/index.html"; exit 1; }
echo "site built in $SITE (open $SITE/index.html through a static server)"

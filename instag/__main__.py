"""`python -m instag ...` is the `instag` console script."""
import sys

from instag.cli import main

sys.exit(main())

"""`python -m fastinfer ...`: the same command line as the `fastinfer` console script."""
import sys

from .cli import main

sys.exit(main())

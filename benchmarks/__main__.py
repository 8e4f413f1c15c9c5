"""`python -m benchmarks`: every benchmark and one summary table (see benchmarks/run_all.py)."""

import sys

from benchmarks.run_all import main

sys.exit(main())

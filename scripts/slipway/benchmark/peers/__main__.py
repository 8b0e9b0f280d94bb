"""``python -m slipway.benchmark.peers``: the same as ``slipway bench --peers``."""

import sys

from slipway.cli import main

sys.exit(main(["bench", "--peers", *sys.argv[1:]]))

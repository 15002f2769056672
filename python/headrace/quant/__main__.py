"""``python -m headrace.quant MODEL --out DIR``, the same as ``headrace quantize``."""

import sys

from headrace.quant.cli import main

sys.exit(main())

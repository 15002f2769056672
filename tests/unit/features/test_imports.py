"""The features package keeps to the import rules: no grpc, no server, no redis or pyarrow
until a store or the log needs them."""

from __future__ import annotations

import subprocess
import sys


def test_importing_features_loads_no_grpc_server_redis_or_arrow() -> None:
    code = (
        "import sys, headrace.features;"
        "bad = [m for m in ('grpc', 'headrace.server', 'redis', 'pyarrow') if m in sys.modules];"
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""

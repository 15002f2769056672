"""``headrace features ...``: load a snapshot into Redis in headrace's layout.

::

    headrace features push user_stats.parquet --view user_stats --entity user_id \\
        --redis redis://127.0.0.1:6379/0 [--features age,spend_30d]

:func:`main` takes the arguments after ``features`` (so the top-level CLI mounts it as a
subcommand) and returns the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from headrace.errors import HeadraceError
from headrace.features.redis import RedisFeatureWriter
from headrace.features.snapshot import read_snapshot


async def push_snapshot(
    path: Path | str,
    view: str,
    entity: str,
    redis_url: str,
    features: Sequence[str] | None = None,
) -> int:
    """Write every row of a snapshot file (Parquet, CSV or NPZ) to Redis as view ``view``
    keyed by column ``entity``; returns the rows written. Missing values are stored as NaN
    (served as the feature's default); ``event_timestamp``, when present, is each row's event
    time, else now."""
    snapshot = read_snapshot(Path(path), entity, features)
    values = snapshot.values.copy()
    values[~snapshot.present] = float("nan")
    writer = RedisFeatureWriter(redis_url)
    try:
        return await writer.write(
            view, entity, snapshot.features, snapshot.keys, values, snapshot.event_time_s
        )
    finally:
        await writer.close()


def build_parser(prog: str = "headrace features") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="online feature stores")
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="load a snapshot file into Redis (headrace layout)")
    push.add_argument("file", type=Path, help="snapshot: .parquet, .csv or .npz")
    push.add_argument("--view", required=True, help="feature view name")
    push.add_argument("--entity", required=True, help="the key column")
    push.add_argument("--redis", required=True, help="redis://host:port/db")
    push.add_argument("--features", help="comma-separated columns (default: all but the key)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    features = [f for f in args.features.split(",") if f] if args.features else None
    try:
        rows = asyncio.run(push_snapshot(args.file, args.view, args.entity, args.redis, features))
    except HeadraceError as error:
        print(f"headrace features push: {error.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f"headrace features push: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # redis-py's ConnectionError is not an OSError
        print(f"headrace features push: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"pushed {rows} rows of view '{args.view}' to {args.redis}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

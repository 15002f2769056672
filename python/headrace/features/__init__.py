"""Online features joined in the server: stores, lookup coalescing, assembly, the served log.

Stores: ``embedded`` (a snapshot file in memory), ``redis`` (headrace's layout; ``headrace
features push`` fills it), ``feast`` (the Redis that ``feast materialize`` fills, read as is).

How the engine uses this package (the whole interface; ``headrace.engine.features`` does it):

1. ``model.toml``: the ``[features]`` table is ``ModelConfig.features``, a
   :class:`FeaturesConfig` (defined in ``headrace.config.features``; ``load_features_config(table,
   path)`` validates a table alone); mistakes are ConfigErrors naming the key and the file.
2. Once per engine: ``FeatureMetrics(registry)`` and, with ``--served-log DIR``,
   ``ServedLog(DIR, registry=registry)`` (``close()`` it when the engine closes).
3. Per model version, where it loads (any thread), after the backend knows its inputs::

       joiner = FeatureJoiner(config, model_dir, backend.inputs, model=name,
                              version=version, metrics=feature_metrics, served_log=served_log)

   ``model_dir`` is the folder of ``model.toml`` (snapshots are relative to it). ConfigError when
   ``into`` is not an FP32 ``[-1, width]`` input of the model.
4. Metadata: ``joiner.client_inputs()`` replaces the model's inputs in ModelMetadata, ModelConfig
   and the engine's input validation (entity inputs INT64/BYTES ``[-1]``, request inputs FP32
   ``[-1]``, the model's other inputs unchanged, ``into`` hidden). For names where
   ``joiner.owns_input(name)``, skip the engine's own dtype/shape check: ``joiner.check_inputs``
   (called by ``assemble``) accepts ``[-1]`` and ``[-1, 1]`` and raises InvalidArgumentError.
5. Per request, on the event loop, before the batcher: ``inputs = await joiner.assemble(inputs)``
   (NotFoundError for ``on_missing = "error"``, UnavailableError for ``on_store_error =
   "unavailable"``, InvalidArgumentError for bad entities). A blocking caller without a loop
   submits it to the serving loop (``asyncio.run_coroutine_threadsafe``); the embedded store
   also works under a throw-away ``asyncio.run``.
6. After the model answered: ``joiner.log_served(client_inputs, assembled, outputs,
   request_id=..., endpoint=..., variant=...)`` (never blocks; no-op without a served log).
7. When the version is retired: ``await joiner.close()`` on the serving loop.
8. CLI: ``headrace features ARGS`` is ``headrace.features.cli.main(ARGS)``.
"""

from headrace.features.assembler import FeatureJoiner
from headrace.features.breaker import Breaker, BreakerPolicy, BreakerState
from headrace.features.coalescer import CoalescePolicy, LookupCoalescer, requests_to_take
from headrace.features.config import FeaturesConfig, ViewConfig, load_features_config
from headrace.features.embedded import EmbeddedStore
from headrace.features.feast import FeastStore
from headrace.features.metrics import FeatureMetrics
from headrace.features.redis import RedisFeatureWriter, RedisStore
from headrace.features.served_log import ServedLog, ServedRows, read_served_log
from headrace.features.store import FeatureStore, StoreError, ViewRows, make_store

__all__ = [
    "Breaker",
    "BreakerPolicy",
    "BreakerState",
    "CoalescePolicy",
    "EmbeddedStore",
    "FeastStore",
    "FeatureJoiner",
    "FeatureMetrics",
    "FeatureStore",
    "FeaturesConfig",
    "LookupCoalescer",
    "RedisFeatureWriter",
    "RedisStore",
    "ServedLog",
    "ServedRows",
    "StoreError",
    "ViewConfig",
    "ViewRows",
    "load_features_config",
    "make_store",
    "read_served_log",
    "requests_to_take",
]

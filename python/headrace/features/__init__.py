"""Online features joined in the server: stores, lookup coalescing, assembly, the served log.

The engine builds one :class:`FeatureJoiner` per model version whose ``model.toml`` has a
``[features]`` table (:func:`load_features_config`), shows clients
:meth:`FeatureJoiner.client_inputs`, and awaits :meth:`FeatureJoiner.assemble` before the model
runs. Stores: ``embedded`` (a snapshot file in memory), ``redis`` (headrace's layout; ``headrace
features push`` fills it), ``feast`` (the Redis that ``feast materialize`` fills).
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

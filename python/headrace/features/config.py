"""The ``[features]`` table's models: they live in the config base
(:mod:`headrace.config.features`, read with the rest of ``model.toml``); re-exported here for the
features package."""

from headrace.config.features import (
    EntityDatatype,
    FeaturesConfig,
    StoreKind,
    ViewConfig,
    load_features_config,
)

__all__ = ["EntityDatatype", "FeaturesConfig", "StoreKind", "ViewConfig", "load_features_config"]

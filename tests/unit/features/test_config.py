"""The [features] table: the issue's example parses; mistakes name the key and the file."""

from __future__ import annotations

import tomllib

import pytest

from headrace.errors import ConfigError
from headrace.features import FeaturesConfig, load_features_config

EXAMPLE = """
[features]
store = "redis"
redis_url = "redis://127.0.0.1:6379/0"
feast_project = "demo"
into = "x"
request_inputs = ["amount"]
on_missing = "default"
timeout_ms = 20
on_store_error = "default"

[[features.views]]
name = "user_stats"
entity = "user_id"
join_key = "user_id"
features = ["age", "spend_30d"]
defaults = { age = 35.0 }
snapshot = "user_stats.parquet"
max_age_s = 0

[[features.views]]
name = "item_stats"
entity = "item_id"
features = ["ctr_7d"]
"""


def table(**changes: object) -> dict[str, object]:
    base = tomllib.loads(EXAMPLE)["features"]
    base.update(changes)
    return base


def test_the_issue_example_parses() -> None:
    config = load_features_config(tomllib.loads(EXAMPLE)["features"], "m/model.toml")
    assert isinstance(config, FeaturesConfig)
    assert config.store == "redis" and config.into == "x" and config.timeout_ms == 20
    assert [v.name for v in config.views] == ["user_stats", "item_stats"]
    assert config.views[0].default_row() == (35.0, 0.0)
    assert config.views[1].feast_join_key == "item_id"
    assert config.entity_inputs == ("user_id", "item_id")
    assert config.width == 4
    assert config.feature_names == (
        "user_stats.age",
        "user_stats.spend_30d",
        "item_stats.ctr_7d",
        "amount",
    )


def test_defaults_of_the_optional_keys() -> None:
    config = load_features_config(
        {"into": "x", "views": [{"name": "v", "entity": "e", "features": ["f"], "snapshot": "s"}]}
    )
    assert config.store == "embedded"
    assert config.on_missing == "default" and config.on_store_error == "default"
    assert config.request_inputs == () and config.views[0].max_age_s == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bogus": 1}, "'features.bogus': unknown key"),
        ({"store": "memcached"}, "'features.store'"),
        ({"timeout_ms": 0}, "'features.timeout_ms'"),
        ({"on_missing": "skip"}, "'features.on_missing'"),
        ({"redis_url": None}, "'redis_url' is required"),
        ({"store": "feast", "feast_project": None}, "'feast_project' is required"),
        ({"views": []}, "'features.views'"),
        ({"request_inputs": ["user_id"]}, "also view entities"),
        ({"into": "amount"}, "'into' (amount)"),
    ],
)
def test_mistakes_name_the_key_and_file(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_features_config(table(**changes), "models/fraud/model.toml")
    assert "models/fraud/model.toml" in error.value.message
    assert message in error.value.message


@pytest.mark.parametrize(
    ("view", "message"),
    [
        ({"colour": "red"}, "'features.views[0].colour': unknown key"),
        ({"features": []}, "'features.views[0].features'"),
        ({"defaults": {"height": 1.0}}, "not in 'features'"),
        ({"defaults": {"age": "old"}}, "'features.views[0].defaults.age'"),
        ({"name": "user:stats"}, "'features.views[0].name'"),
        ({"max_age_s": -1}, "'features.views[0].max_age_s'"),
        ({"features": ["age", "age"]}, "listed twice"),
        ({"entity_datatype": "FP32"}, "'features.views[0].entity_datatype'"),
    ],
)
def test_view_mistakes_name_the_key(view: dict[str, object], message: str) -> None:
    raw = table()
    views = [dict(v) for v in raw["views"]]  # type: ignore[attr-defined]
    views[0].update(view)
    with pytest.raises(ConfigError, match=r"model\.toml") as error:
        load_features_config(table(views=views))
    assert message in error.value.message


def test_embedded_views_need_a_snapshot() -> None:
    raw = table(store="embedded")
    with pytest.raises(ConfigError, match=r"item_stats.*need a 'snapshot'"):
        load_features_config(raw)


def test_an_entity_declared_with_two_datatypes_is_refused() -> None:
    views = [
        {"name": "a", "entity": "u", "features": ["f"], "entity_datatype": "INT64"},
        {"name": "b", "entity": "u", "features": ["g"], "entity_datatype": "BYTES"},
    ]
    with pytest.raises(ConfigError, match="declared INT64 and BYTES"):
        load_features_config(table(views=views))

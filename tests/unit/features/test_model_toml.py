"""The ``[features]`` table read with the rest of ``model.toml``: parsed into the features
package's models, and every mistake named by its key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace.config import FeaturesConfig, load_model_config
from headrace.errors import ConfigError

TABLE = """
[features]
store = "redis"
redis_url = "redis://127.0.0.1:6379/0"
into = "x"
request_inputs = ["amount"]
timeout_ms = 20

[[features.views]]
name = "user_stats"
entity = "user_id"
features = ["age", "spend_30d"]
defaults = { age = 35.0 }

[[features.views]]
name = "item_stats"
entity = "item_id"
entity_datatype = "BYTES"
features = ["ctr_7d"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.toml"
    path.write_text(text)
    return path


def test_the_features_table_is_part_of_model_toml(tmp_path: Path) -> None:
    config = load_model_config("ranker", write(tmp_path, "max_batch_size = 8\n" + TABLE))
    features = config.features
    assert isinstance(features, FeaturesConfig)
    assert features.store == "redis" and features.into == "x" and features.timeout_ms == 20
    assert [v.name for v in features.views] == ["user_stats", "item_stats"]
    assert features.views[0].default_row() == (35.0, 0.0)
    assert features.entity_inputs == ("user_id", "item_id")
    assert features.width == 4
    # A changed [features] table is a serving change: the model's versions are rebuilt.
    other = load_model_config("ranker", write(tmp_path, TABLE.replace("= 20", "= 30")))
    assert config.serving_settings() != other.serving_settings()
    assert load_model_config("plain", write(tmp_path, "max_batch_size = 8\n")).features is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('store = "redis"', 'store = "redis"\nstorage = 1'), "unknown key 'features.storage'"),
        (('entity = "item_id"', 'entity = "item_id"\nentiti = 1'),
         "unknown key 'features.views[1].entiti'"),
        (('into = "x"\n', ""), "'features.into'"),
        (('redis_url = "redis://127.0.0.1:6379/0"\n', ""), "'redis_url' is required"),
        (('store = "redis"', 'store = "memcached"'), "'features.store' must be one of"),
        (("timeout_ms = 20", "timeout_ms = 0"), "'features.timeout_ms' must be"),
        (('entity_datatype = "BYTES"', 'entity_datatype = "FP32"'),
         "'features.views[1].entity_datatype' must be one of"),
        (("defaults = { age = 35.0 }", "defaults = { height = 1.0 }"), "not in 'features'"),
    ],
)  # fmt: skip
def test_mistakes_name_the_key_and_the_file(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in TABLE
    path = write(tmp_path, TABLE.replace(old, new, 1))
    with pytest.raises(ConfigError) as raised:
        load_model_config("ranker", path)
    assert str(path) in raised.value.message
    assert message in raised.value.message, raised.value.message
    if "unknown key" in message:
        assert "(known: " in raised.value.message

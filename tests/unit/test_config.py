"""model.toml parsing: every error names the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace.config import ServerSettings, VersionPolicy, load_model_config
from headrace.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.toml"
    path.write_text(text)
    return path


def test_full_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
max_batch_size = 32
instances = 2
version_policy = { specific = [1, 3] }
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 8]
[batching]
max_queue_delay_us = 500
preferred_batch_sizes = [8, 16]
max_queue_size = 100
priority_levels = 2
default_priority_level = 2
default_timeout_us = 1000
latency_target_us = 5000
[onnxruntime]
intra_op_threads = 2
""",
    )
    config = load_model_config("m", path)
    assert config.max_batch_size == 32 and config.instances == 2
    assert config.version_policy.select([1, 2, 3, 4]) == [1, 3]
    assert config.inputs[0].shape == (-1, 8)
    assert config.batching.max_queue_delay_us == 500
    assert config.batching.preferred_batch_sizes == (8, 16)
    assert config.intra_op_threads == 2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("max_batch_sise = 4\n", "unknown key 'max_batch_sise'"),
        ("[batching]\nmax_delay_us = 4\n", "unknown key 'batching.max_delay_us'"),
        ("[onnxruntime]\nthreads = 4\n", "unknown key 'onnxruntime.threads'"),
        ("max_batch_size = -1\n", "'max_batch_size' must be an integer >= 0"),
        ("[batching]\nmax_queue_delay_us = 'soon'\n", "'batching.max_queue_delay_us'"),
        ("version_policy = 'newest'\n", "'version_policy' must be"),
        ("[[inputs]]\nname = 'x'\ndatatype = 'FLOAT'\nshape = [1]\n", "'inputs[0].datatype'"),
        ("backend = 'tensorflow'\n", "'backend' must be one of"),
        ("this is = not toml [", "not valid TOML"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_model_config("m", path)
    assert fragment in info.value.message
    assert str(path) in info.value.message


def test_version_policies() -> None:
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy("latest", 2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy("all").select([3, 1]) == [1, 3]


def test_server_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_GRPC_PORT", "9100")
    monkeypatch.setenv("HEADRACE_MAX_MESSAGE_BYTES", "1024")
    settings = ServerSettings()
    assert settings.grpc_port == 9100 and settings.max_message_bytes == 1024
    assert ServerSettings(grpc_port=7).grpc_port == 7  # explicit values win
    assert ServerSettings().metrics_port == 8002
    monkeypatch.delenv("HEADRACE_MAX_MESSAGE_BYTES")
    assert ServerSettings().max_message_bytes == 256 * 1024 * 1024

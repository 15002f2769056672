"""The admin.proto messages for endpoints carry endpoints.toml's keys, so the servicer converts
with json_format alone; checked both ways on every strategy's settings."""

from __future__ import annotations

from google.protobuf import json_format

from headrace.routing import parse_endpoint
from headrace.wire import admin as pb
from unit.routing.routing_support import endpoint

FULL = [
    endpoint(
        name="fraud",
        strategy="canary",
        sticky_key="user_id",
        variants=[
            {"name": "a", "model": "gbm", "version": "3"},
            {"name": "b", "model": "mlp", "version": "champion"},
        ],
        shadows=[{"name": "next", "model": "nxt", "sample": 0.5, "tolerance": 0.01}],
        canary={"steps": [10, 100], "step_s": 0, "step_requests": 500, "max_reward_drop": 0.1},
        quality={"kind": "classifier", "output": "probs", "labels": True},
    ),
    endpoint(
        name="b",
        strategy="bandit",
        variants=[{"name": "x", "model": "m"}, {"name": "y", "model": "n"}],
        bandit={"algorithm": "ucb1", "reward": "gaussian", "ucb_c": 1.0},
    ),
    endpoint(
        name="bg",
        strategy="blue_green",
        variants=[{"name": "x", "model": "m"}, {"name": "y", "model": "n"}],
        blue_green={"active": "y"},
    ),
    endpoint(
        name="s", variants=[{"name": "x", "model": "m", "weight": 0}, {"name": "y", "model": "n"}]
    ),
]


def test_configs_round_trip_through_the_endpoint_message() -> None:
    for config in FULL:
        message = json_format.ParseDict(config.to_toml_dict(), pb.Endpoint())
        data = json_format.MessageToDict(message, preserving_proto_field_name=True)
        assert parse_endpoint(data) == config


def test_a_minimal_message_takes_the_defaults() -> None:
    message = pb.Endpoint(name="e", variants=[pb.EndpointVariant(name="a", model="m", version="2")])
    config = parse_endpoint(json_format.MessageToDict(message, preserving_proto_field_name=True))
    assert config.strategy == "split" and config.weights() == [1.0]
    assert config.variants[0].version == "2"

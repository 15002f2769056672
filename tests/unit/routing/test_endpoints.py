"""Endpoints: resolving names, blue-green, admin changes with the state folder, signatures,
config errors that name the key and the file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from headrace.errors import ConfigError, InvalidArgumentError, NotFoundError, StatusCode
from headrace.routing import (
    EndpointExistsError,
    Endpoints,
    ModelSignature,
    RoutingEvent,
    check_signatures,
    load_endpoints_file,
)
from unit.routing.routing_support import MakeEndpoints, endpoint, variants

# The example of issue 12, verbatim (one comment is longer than our line limit, hence the join).
ISSUE_EXAMPLE = """
[[endpoint]]
name = "fraud"
strategy = "split"                  # split | canary | blue_green | bandit
sticky_key = "user_id"              # a request parameter (or input) whose value pins the variant
variants = [
  { name = "a", model = "fraud_gbm", version = "3", weight = 70 },
  { name = "b", model = "fraud_mlp", version = "champion", weight = 30 },
]
shadows = [{ name = "next", model = "fraud_next", sample = 1.0 }]   # any strategy may mirror
[endpoint.canary]                   # strategy = "canary": variants[0] baseline, """ + (
    """variants[1] candidate
steps = [5, 25, 50, 100]
step_s = 60
max_error_rate_delta = 0.01
max_p99_ratio = 1.5
[endpoint.bandit]                   # strategy = "bandit"
algorithm = "thompson"              # thompson | epsilon_greedy | ucb1
epsilon = 0.1
reward = "bernoulli"                # bernoulli (rewards in [0, 1]) | gaussian
"""
)


def blue_green() -> object:
    return endpoint(
        name="bg",
        strategy="blue_green",
        variants=[
            {"name": "blue", "model": "m", "version": 1},
            {"name": "green", "model": "m", "version": 2},
        ],
    )


def test_the_issue_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(ISSUE_EXAMPLE)
    (fraud,) = load_endpoints_file(path)
    assert fraud.strategy == "split" and fraud.sticky_key == "user_id"
    assert [(v.name, v.model, v.version, v.weight) for v in fraud.variants] == [
        ("a", "fraud_gbm", "3", 70),
        ("b", "fraud_mlp", "champion", 30),
    ]
    assert fraud.shadows[0].model == "fraud_next"
    assert fraud.canary is not None and fraud.canary.steps == (5, 25, 50, 100)
    assert fraud.bandit is not None and fraud.bandit.algorithm == "thompson"
    routing = Endpoints([fraud], seed="x")
    route = routing.resolve("fraud", "", {"user_id": "alice"})
    assert (route.model, route.version) in {("fraud_gbm", "3"), ("fraud_mlp", "champion")}
    assert route.shadows[0].model == "fraud_next"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[endpoint]]\nname = "e"\nvariants = [{name = "a", model = "m", wieght = 1}]\n',
            "'endpoint[0].variants[0].wieght': unknown key",
        ),
        (
            '[[endpoint]]\nname = "e"\nstrategy = "splitt"\n'
            'variants = [{name = "a", model = "m"}]\n',
            "'endpoint[0].strategy'",
        ),
        (
            '[[endpoint]]\nname = "e"\nstrategy = "canary"\n'
            'variants = [{name = "a", model = "m"}]\n',
            "needs exactly 2 variants",
        ),
        (
            '[[endpoint]]\nname = "e"\nvariants = [{name = "a", model = "m"}]\n'
            "[endpoint.canary]\nsteps = [50, 25, 100]\n",
            "'endpoint[0].canary.steps'",
        ),
        (
            '[[endpoint]]\nname = "e"\n'
            'variants = [{name = "a", model = "m"}, {name = "a", model = "n"}]\n',
            "repeated: ['a']",
        ),
        (
            '[[endpoint]]\nname = "e"\nvariants = [{name = "a", model = "m"}]\n'
            '[[endpoint]]\nname = "e"\nvariants = [{name = "a", model = "m"}]\n',
            "repeated: ['e']",
        ),
        (
            '[[endpoint]]\nname = "e"\nvariants = [{name = "a", model = "m", weight = -1}]\n',
            "'endpoint[0].variants[0].weight'",
        ),
        ("[[endpoint]\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_endpoints_file(path)
    assert str(path) in caught.value.message
    assert message in caught.value.message
    assert caught.value.code is StatusCode.INVALID_ARGUMENT


def test_resolve_errors(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1), ("b", 1))))
    with pytest.raises(NotFoundError, match="unknown model or endpoint 'nope'"):
        routing.resolve("nope")
    with pytest.raises(InvalidArgumentError, match="chooses the version itself"):
        routing.resolve("e", "2")
    with pytest.raises(InvalidArgumentError, match="has no variant 'c'"):
        routing.resolve("e", "", {"headrace_variant": "c"})


def test_a_request_can_pin_the_variant_it_was_answered_by(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 99), ("b", 1))))
    assert {routing.resolve("e", "", {"headrace_variant": "b"}).variant for _ in range(100)} == {
        "b"
    }


def test_a_plain_model_is_an_endpoint_of_one_variant(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints()
    routing.add_model("mlp")
    route = routing.resolve("mlp")
    assert (route.endpoint, route.variant, route.model, route.version) == ("mlp", "mlp", "mlp", "")
    assert routing.resolve("mlp", "2").version == "2"
    routing.complete(route, ok=True, latency_ns=1_000_000)
    routing.complete(route, ok=False, latency_ns=3_000_000)
    report = routing.report("mlp")
    assert (report.variants[0].requests, report.variants[0].errors) == (2, 1)
    assert routing.names() == [] and routing.names(include_models=True) == ["mlp"]
    routing.remove_model("mlp")
    with pytest.raises(NotFoundError):
        routing.resolve("mlp")


def test_blue_green_switch_and_rollback_take_effect_on_the_next_request(
    make_endpoints: MakeEndpoints,
) -> None:
    events: list[RoutingEvent] = []
    routing = make_endpoints(blue_green(), events=events)
    assert {routing.resolve("bg").variant for _ in range(50)} == {"blue"}
    routing.switch("bg")
    assert routing.resolve("bg").version == "2"
    assert {routing.resolve("bg").variant for _ in range(50)} == {"green"}
    routing.rollback("bg")
    assert routing.resolve("bg").variant == "blue"
    routing.switch("bg", "green")
    routing.switch("bg", "green")  # already active: stays
    assert routing.resolve("bg").variant == "green"
    assert [e.kind for e in events] == ["switch", "rollback", "switch", "switch"]
    assert events[-1].detail == "variant 'green' is already active"
    routing.rollback("bg")  # the last change was blue -> green
    assert routing.resolve("bg").variant == "blue"
    with pytest.raises(InvalidArgumentError, match="no variant 'red'"):
        routing.switch("bg", "red")
    split = make_endpoints(endpoint(name="e", variants=variants(("a", 1))))
    with pytest.raises(InvalidArgumentError, match="Switch applies to blue_green"):
        split.switch("e")
    with pytest.raises(InvalidArgumentError, match="Rollback applies"):
        split.rollback("e")


def test_admin_changes_persist_and_survive_a_restart(
    make_endpoints: MakeEndpoints, tmp_path: Path
) -> None:
    declared = [
        endpoint(name="kept", variants=variants(("a", 1))),
        blue_green(),
        endpoint(name="gone", variants=variants(("a", 1))),
    ]
    routing = make_endpoints(*declared, state_dir=tmp_path)
    routing.create({"name": "new", "variants": [{"name": "x", "model": "mx"}]})
    with pytest.raises(EndpointExistsError) as exists:
        routing.create({"name": "new", "variants": [{"name": "x", "model": "mx"}]})
    assert exists.value.code is StatusCode.ALREADY_EXISTS
    routing.update(endpoint(name="kept", variants=variants(("a", 1), ("b", 3))))
    routing.delete("gone")
    routing.switch("bg")
    with pytest.raises(NotFoundError):
        routing.delete("gone")
    with pytest.raises(NotFoundError):
        routing.update(endpoint(name="never", variants=variants(("a", 1))))
    saved = json.loads((tmp_path / "endpoints.json").read_text())
    assert saved["overrides"]["gone"] is None
    restarted = make_endpoints(*declared, state_dir=tmp_path, seed="another")
    assert restarted.names() == ["bg", "kept", "new"]
    assert restarted.resolve("new").model == "mx"
    assert [v.name for v in restarted.get("kept").config.variants] == ["a", "b"]
    assert restarted.resolve("bg").variant == "green"
    assert not list(tmp_path.glob(".endpoints.json.*"))  # no temporary file left behind


def test_a_changed_declaration_drops_stale_runtime_state(
    make_endpoints: MakeEndpoints, tmp_path: Path
) -> None:
    routing = make_endpoints(blue_green(), state_dir=tmp_path)
    routing.switch("bg")
    changed = endpoint(
        name="bg",
        strategy="blue_green",
        variants=[
            {"name": "blue", "model": "m", "version": 1},
            {"name": "green", "model": "m", "version": 3},
        ],
    )
    assert make_endpoints(changed, state_dir=tmp_path).resolve("bg").variant == "blue"


def test_a_broken_state_file_is_a_clear_error(
    make_endpoints: MakeEndpoints, tmp_path: Path
) -> None:
    (tmp_path / "endpoints.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"endpoints\.json: cannot read the routing state"):
        make_endpoints(state_dir=tmp_path)


def test_statistics_survive_an_update_of_weights(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1), ("b", 1))))
    for _ in range(100):
        routing.complete(routing.resolve("e"), ok=True, latency_ns=1_000_000)
    routing.update(endpoint(name="e", variants=variants(("a", 3), ("b", 1))))
    assert sum(v.requests for v in routing.report("e").variants) == 100


SIG = ModelSignature(inputs=(("x", "FP32", (-1, 8)),), outputs=(("y", "FP32", (-1, 2)),))


def test_variants_must_share_their_signature(make_endpoints: MakeEndpoints) -> None:
    signatures = {
        ("m_a", ""): SIG,
        ("m_b", ""): ModelSignature(
            inputs=(("x", "FP32", (-1, 8)),), outputs=(("y", "FP64", (-1, 2)),)
        ),
        ("m_c", ""): ModelSignature(
            inputs=(("x", "FP32", (4, 8)),), outputs=(("y", "FP32", (-1, 2)),)
        ),
    }

    def signature_of(model: str, version: str) -> ModelSignature:
        if (model, version) not in signatures:
            raise NotFoundError(f"unknown model '{model}'")
        return signatures[(model, version)]

    routing = make_endpoints(signature_of=signature_of)
    good = {"name": "e", "variants": [{"name": "a", "model": "m_a"}, {"name": "c", "model": "m_c"}]}
    routing.create(good)  # -1 matches 4
    with pytest.raises(
        InvalidArgumentError,
        match="variant 'b' does not match variant 'a': output 'y' is FP32 vs FP64",
    ):
        routing.create(
            {
                "name": "f",
                "variants": [{"name": "a", "model": "m_a"}, {"name": "b", "model": "m_b"}],
            }
        )
    with pytest.raises(NotFoundError, match="endpoint 'g', variant 'z': unknown model 'm_z'"):
        routing.create(
            {
                "name": "g",
                "variants": [{"name": "a", "model": "m_a"}],
                "shadows": [{"name": "z", "model": "m_z"}],
            }
        )
    assert routing.names() == ["e"]


def test_check_signatures_reports_names_and_shapes() -> None:
    other = ModelSignature(inputs=(("x", "FP32", (-1, 9)),), outputs=SIG.outputs)
    with pytest.raises(InvalidArgumentError, match=r"input 'x' has shape \[-1, 8\] vs \[-1, 9\]"):
        check_signatures("e", {"a": SIG, "b": other})
    renamed = ModelSignature(inputs=(("z", "FP32", (-1, 8)),), outputs=SIG.outputs)
    with pytest.raises(InvalidArgumentError, match=r"inputs \['x'\] vs \['z'\]"):
        check_signatures("e", {"a": SIG, "b": renamed})
    check_signatures("e", {"a": SIG, "b": SIG})


def test_routing_imports_neither_grpc_nor_the_server() -> None:
    code = textwrap.dedent(
        """
        import sys
        import headrace.routing
        bad = [m for m in sys.modules if m == "grpc" or m.startswith(("grpc.", "headrace.server"))]
        print(",".join(bad))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_split_shares_follow_an_update(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1), ("b", 1))))
    routing.update(endpoint(name="e", variants=variants(("a", 1), ("b", 0), ("c", 3))))
    counts = Counter(routing.resolve("e").variant for _ in range(4_000))
    assert counts["b"] == 0
    assert 2_800 <= counts["c"] <= 3_200
    assert routing.report("e").state["shares"] == {"a": 0.25, "b": 0.0, "c": 0.75}

"""Which versions load, serve and stay warm: ``plan.choose`` over a model's state (pure)."""

from __future__ import annotations

import pytest

from headrace.errors import NotFoundError
from headrace.registry.plan import (
    HISTORY_LENGTH,
    ModelControl,
    Override,
    choose,
    rollback_target,
    standby_versions,
)


def control(history: list[int], **kwargs: object) -> ModelControl:
    state = ModelControl("mlflow", **kwargs)  # type: ignore[arg-type]
    for version in history:
        state.served(version)
    return state


def test_the_source_choice_serves_and_previous_versions_stay_warm() -> None:
    state = control([1, 2, 3])
    for keep, standby in ((0, ()), (1, (3,)), (2, (3, 2)), (5, (3, 2, 1))):
        choice = choose(
            state,
            selected=[4],
            available=None,
            loaded={1, 2, 3},
            keep_previous=keep,
            serve_aliases=True,
        )
        assert (choice.serving, choice.required, choice.standby) == (4, {4}, standby)
    # Standby is never loaded for its own sake: only what is loaded stays.
    choice = choose(
        state, selected=[4], available=None, loaded={1}, keep_previous=2, serve_aliases=True
    )
    assert choice.standby == (1,)


def test_a_pin_serves_over_the_source_and_the_source_choice_stays_warm() -> None:
    state = control([1, 2], desired=2)
    state.override = Override("pin", 1, 2, "alice")
    choice = choose(
        state, selected=[], available=None, loaded={1, 2}, keep_previous=0, serve_aliases=True
    )
    assert (choice.serving, choice.required, choice.standby) == (1, {1}, (2,))
    # The repository's policy still loads its versions; the pin only chooses the default.
    choice = choose(
        state, selected=[2], available={1, 2}, loaded={1, 2}, keep_previous=1, serve_aliases=True
    )
    assert (choice.serving, choice.required) == (1, {1, 2})


def test_a_rollback_ends_when_the_source_moves_on_a_pin_does_not() -> None:
    state = control([1, 2], desired=2)
    state.override = Override("rollback", 1, 2, "bob")
    assert state.desired_moved(2) is None and state.override is not None
    ended = state.desired_moved(3)
    assert ended is not None and ended.version == 1 and state.override is None
    state.override = Override("pin", 1, 3, "bob")
    assert state.desired_moved(4) is None and state.override.version == 1


def test_alias_targets_load_beside_except_the_followed_alias() -> None:
    state = control([5], aliases={"champion": 5, "challenger": 6, "old": 2}, desired=5)
    state.followed_alias = "champion"
    choice = choose(
        state, selected=[5], available=None, loaded={5}, keep_previous=1, serve_aliases=True
    )
    assert (choice.required, choice.optional) == ({5}, {2, 6})
    off = choose(
        state, selected=[5], available=None, loaded={5}, keep_previous=1, serve_aliases=False
    )
    assert off.optional == frozenset()
    # Where the source lists its versions, a target that is not there does not load.
    listed = choose(
        state, selected=[5], available={5, 6}, loaded={5}, keep_previous=1, serve_aliases=True
    )
    assert listed.optional == {6}


def test_an_override_of_a_version_that_is_gone_is_dropped() -> None:
    state = control([3, 4], desired=4)
    state.override = Override("pin", 3, 4, "carol")
    choice = choose(
        state, selected=[4], available={4}, loaded={3, 4}, keep_previous=1, serve_aliases=True
    )
    assert choice.dropped is not None and choice.dropped.version == 3
    assert (choice.serving, state.override) == (4, None)
    assert choice.standby == ()  # 3 is gone from the source


def test_nothing_to_serve_is_an_error() -> None:
    with pytest.raises(NotFoundError):
        choose(
            control([]),
            selected=[],
            available=None,
            loaded=set(),
            keep_previous=1,
            serve_aliases=True,
        )


def test_history_rollback_targets_and_standby_order() -> None:
    state = control([1, 2, 3, 2])
    assert state.history == [1, 3, 2]  # a version that serves again moves to the end
    assert rollback_target(state.history, 2) == 3
    assert rollback_target([2], 2) is None
    assert standby_versions([1, 3, 2], 1, serving=2, exclude={3}, loaded={1, 3}) == (1,)
    long = control(list(range(1, HISTORY_LENGTH + 10)))
    assert len(long.history) == HISTORY_LENGTH and long.history[-1] == HISTORY_LENGTH + 9

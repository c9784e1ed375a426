"""The promotion history as the registry's tags hold it: parsed strictly (a malformed tag is
an error naming it), replayed into the champions in force, and an unfinished promotion
settled by where the alias is. The lock's timing from the environment. No store needed:
tests/integration/test_promotion.py runs the same through the CLI on real stores."""

from __future__ import annotations

import json

import pytest

from image_finetune.errors import ConfigError, RegistryStateError
from image_finetune.registry.lock import lock_timing, stored_lease
from image_finetune.registry.promotion import (
    ABANDONED,
    DONE,
    INTENDED,
    champion_stack,
    history_key,
    parse_history,
    settled_state,
    unfinished,
    unfinished_report,
)


def entry(seq: int, action: str, version: str, previous: str | None, **extra) -> dict:
    return {
        "seq": seq,
        "action": action,
        "version": version,
        "previous": previous,
        "reason": "r",
        "at": "2026-01-01T00:00:00+00:00",
        "by": "me",
        **extra,
    }


def tags(*entries: dict, **others: str) -> dict[str, str]:
    return {**{history_key(e["seq"]): json.dumps(e) for e in entries}, **others}


def test_the_history_is_read_in_sequence_order_with_other_tags_left_alone():
    written = [entry(1, "promote", "2", "1"), entry(0, "promote", "1", None)]
    history = parse_history("m", tags(*written, owner="team", **{"promotion": "x"}))
    assert [(e["seq"], e["version"], e["state"]) for e in history] == [
        (0, "1", DONE),
        (1, "2", DONE),
    ]


@pytest.mark.parametrize(
    "key,value,why",
    [
        ("promotion.000000", "{", "not JSON"),
        ("promotion.000000", "null", "a JSON NoneType, not an object"),
        (
            "promotion.000000",
            json.dumps({**entry(0, "promote", "1", None), "by": 7}),
            "'by' is missing or not a str",
        ),
        (
            "promotion.000000",
            json.dumps({**entry(0, "promote", "1", None), "previous": 3}),
            "'previous' is neither a version nor null",
        ),
        (
            "promotion.000000",
            json.dumps(entry(5, "promote", "1", None)),
            "its seq 5 is not the 0 in its name",
        ),
        (
            "promotion.000000",
            json.dumps({**entry(0, "promote", "1", None), "seq": False}),
            "its seq False is not the 0",
        ),
        (
            "promotion.000000",
            json.dumps(entry(0, "promote", "1", None, state="maybe")),
            "unknown state 'maybe'",
        ),
        ("promotion.٣", json.dumps(entry(3, "promote", "1", None)), "its name is not"),
        ("promotion.000000", "[" * 100_000 + "]" * 100_000, "not JSON"),
    ],
)
def test_a_malformed_tag_is_an_error_naming_it(key, value, why):
    with pytest.raises(RegistryStateError) as raised:
        parse_history("m", {key: value})
    assert f"tag {key!r} of m is malformed ({why}" in str(raised.value)
    assert raised.value.exit_code == 9


def test_only_finished_entries_move_the_champion_stack():
    history = parse_history(
        "m",
        tags(
            entry(0, "promote", "1", None),
            entry(1, "promote", "2", "1"),
            entry(2, "promote", "3", "2", state=ABANDONED),
            entry(3, "rollback", "1", "2"),
            entry(4, "promote", "4", "1", state=INTENDED),
        ),
    )
    assert champion_stack(history) == ["1"]
    assert unfinished(history)["seq"] == 4


def test_an_unfinished_entry_is_done_where_the_alias_moved_and_abandoned_elsewhere():
    pending = entry(4, "promote", "4", "1", state=INTENDED)
    assert settled_state(pending, "4") == DONE
    assert settled_state(pending, "1") == ABANDONED
    assert settled_state(pending, None) == ABANDONED
    assert "the alias moved but the record was not completed" in unfinished_report([pending], "4")
    assert "the alias did not move to it" in unfinished_report([pending], "1")
    assert unfinished_report([entry(0, "promote", "1", None)], "1") is None


@pytest.mark.parametrize(
    "value,expected",
    [("12.5", 12.5), ("", 30.0), ("nan", 30.0), ("-1", 30.0), ("inf", 30.0), ("ten", 30.0)],
)
def test_a_waiter_uses_the_lease_stored_with_the_lock_when_it_is_sound(value, expected):
    assert stored_lease({"lease": value} if value else {}, default=30.0) == expected


@pytest.mark.parametrize("value", ["ten", "0", "-5", "nan", "inf"])
def test_a_bad_lock_setting_is_a_config_error_naming_it(monkeypatch, value):
    monkeypatch.setenv("IMAGE_FINETUNE_LOCK_LEASE", value)
    with pytest.raises(
        ConfigError,
        match=f"IMAGE_FINETUNE_LOCK_LEASE='{value}' is not a positive number of seconds",
    ):
        lock_timing()

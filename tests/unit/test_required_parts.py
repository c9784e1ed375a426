"""A missing real part skips loudly on a developer's machine and fails in CI."""

import pytest

from tests.support import REQUIRE_ENV, missing_part


def test_a_missing_part_skips_for_a_developer(monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="weights not found"):
        missing_part("weights not found at /nowhere")


def test_a_missing_part_fails_where_every_part_is_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="required real part missing: weights"):
        missing_part("weights not found at /nowhere")


def test_ci_requires_every_part():
    from tests.support import ROOT

    assert f"export {REQUIRE_ENV}=1" in (ROOT / ".ci" / "run").read_text()

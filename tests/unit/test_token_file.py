"""The bearer token from a mounted Secret is re-read when the Secret changes: the new token
works and the old one stops, without a restart; a file caught empty keeps the last token."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.security import HTTPAuthorizationCredentials

from image_finetune.serving.auth import token_guard
from image_finetune.serving.errors import Rejected
from tests.secrets_volume import rotate_like_kubelet


def bearer(token: str) -> HTTPAuthorizationCredentials:
    return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)


def allowed(check, token: str) -> bool:
    try:
        check(bearer(token))
    except Rejected as refused:
        assert refused.status == 401
        return False
    return True


@pytest.fixture
def mount(tmp_path) -> Path:
    rotate_like_kubelet(tmp_path, "first-token", 1)
    (tmp_path / "token").symlink_to("..data/token")
    return tmp_path


def test_a_rotated_secret_takes_effect_and_the_old_token_stops(mount):
    check = token_guard("first-token", mount / "token")
    assert allowed(check, "first-token") and not allowed(check, "second-token")
    rotate_like_kubelet(mount, "second-token", 2)
    assert allowed(check, "second-token") and not allowed(check, "first-token")


def test_a_token_file_caught_empty_or_gone_keeps_the_last_token(tmp_path):
    path = tmp_path / "token"
    path.write_text("only-token")
    check = token_guard("only-token", path)
    path.write_text("")
    assert allowed(check, "only-token") and not allowed(check, "")
    path.unlink()
    assert allowed(check, "only-token")
    path.write_text("back-again\n")
    assert allowed(check, "back-again") and not allowed(check, "only-token")


def test_a_token_given_directly_is_the_token():
    assert allowed(token_guard(None), "anything")
    check = token_guard("direct")
    assert allowed(check, "direct") and not allowed(check, "other")
    with pytest.raises(Rejected):
        check(None)

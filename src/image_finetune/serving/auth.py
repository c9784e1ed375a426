"""Optional bearer-token authentication: with a token configured, every route but the probes
and the metrics wants ``Authorization: Bearer <token>``.

A token read from a file (a mounted Secret) is re-read when the file changes: each request
costs one ``stat`` (a Secret's update replaces the file behind a symlink, so its inode and
time change), and rotating the Secret takes effect within the kubelet's sync period, without
a restart; the old token stops working at the same moment."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from image_finetune.serving.errors import Rejected
from image_finetune.serving.settings import read_token

log = logging.getLogger(__name__)

# Documents the scheme in OpenAPI; the check itself is ours (401, not FastAPI's 403).
BEARER = HTTPBearer(
    auto_error=False,
    description="the token set with IMAGE_FINETUNE_TOKEN or IMAGE_FINETUNE_TOKEN_FILE",
)


class TokenFile:
    """The token in ``path``, re-read whenever the file's identity or time changes. A file
    that becomes unreadable or empty keeps the last token (and says so in the log): a
    Secret being rewritten never opens the server."""

    def __init__(self, path: Path, token: str):
        self.path, self.token = path, token
        self._seen = self._identity()

    def _identity(self) -> tuple | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_dev, stat.st_mtime_ns, stat.st_size)

    def current(self) -> str:
        identity = self._identity()
        if identity != self._seen:
            self._seen = identity
            try:
                token = read_token(None, self.path)
            except (OSError, ValueError):
                token = None
            if token:
                self.token = token
                log.info("token file %s changed: using its new token", self.path)
            else:
                log.warning(
                    "token file %s is empty or unreadable: keeping the last token", self.path
                )
        return self.token


def token_guard(token: str | None, token_file: Path | None = None):
    """A dependency that lets a request through only with the token (any, without one);
    with ``token_file``, the token is that file's current content."""
    source = TokenFile(token_file, token) if token and token_file else None

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        expected = source.current() if source else token
        if expected is None:
            return
        # compare_digest: the time taken says nothing about how much of a guess was right.
        if credentials is None or not hmac.compare_digest(
            credentials.credentials.encode(), expected.encode()
        ):
            raise Rejected(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})

    return require_token

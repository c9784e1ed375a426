"""Optional bearer-token authentication: with a token configured, every route but the probes
and the metrics wants ``Authorization: Bearer <token>``."""

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from image_finetune.serving.errors import Rejected

# Documents the scheme in OpenAPI; the check itself is ours (401, not FastAPI's 403).
BEARER = HTTPBearer(auto_error=False, description="the token set with IMAGE_FINETUNE_TOKEN "
                    "or IMAGE_FINETUNE_TOKEN_FILE")


def token_guard(token: str | None):
    """A dependency that lets a request through only with the token (any, without one)."""

    def require_token(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if token is None:
            return
        # compare_digest: the time taken says nothing about how much of a guess was right.
        if credentials is None or not hmac.compare_digest(
                credentials.credentials.encode(), token.encode()):
            raise Rejected(401, "a valid bearer token is required",
                           {"WWW-Authenticate": "Bearer"})

    return require_token

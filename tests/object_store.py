"""S3-compatible object storage (boto3): reachability and credential checks with clear errors
(the integration tests' check that the store the services started answers).

MLflow artifacts (through the tracking server) and DVC's remote live on the same store;
the endpoint and credentials come from the environment only (``AWS_ENDPOINT_URL_S3`` or
``MLFLOW_S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import os

from image_finetune.errors import ServiceError


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")


def check_bucket(bucket: str, endpoint: str | None = None) -> None:
    """Raise ServiceError, saying what is wrong, unless ``bucket`` is reachable and readable."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    endpoint = endpoint or s3_endpoint()
    # A new session: the default one caches the credentials it first resolved.
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}),
    )
    where = f"S3 bucket {bucket!r} at {endpoint or 'AWS'}"
    try:
        client.head_bucket(Bucket=bucket)
    except EndpointConnectionError as exc:
        raise ServiceError(f"{where}: the server is unreachable ({exc})") from exc
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (401, 403) or code in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403",
        ):
            raise ServiceError(
                f"{where}: the credentials were rejected ({code or status}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            ) from exc
        if status == 404 or code in ("404", "NoSuchBucket"):
            raise ServiceError(f"{where}: no such bucket") from exc
        raise ServiceError(f"{where}: {code or status} ({exc})") from exc
    except BotoCoreError as exc:
        raise ServiceError(f"{where}: {exc}") from exc

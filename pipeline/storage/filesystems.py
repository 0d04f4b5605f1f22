"""One pyarrow filesystem per scheme (and HDFS host), built once per process from the standard settings.

S3 reads the standard AWS variables itself except AWS_ENDPOINT_URL, which pyarrow ignores, so every setting is read
here and passed explicitly: the same variables then mean the same thing to this tool, the aws CLI and boto3.
Timeouts are short and retries few, so that an unreachable endpoint fails in seconds, not after a retry loop.
"""

import os
from datetime import timedelta
from functools import lru_cache
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.errors import PipelineError, first_line

CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 60.0  # one request (a shard's upload part) may take this long on a slow link
ATTEMPTS = 3  # the SDK's standard retry, capped: a throttled request is retried, a dead endpoint fails fast
# Where the AWS SDK finds credentials other than the key variables: with none of these set, there are none to find.
CREDENTIAL_SOURCES = ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                      "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str, str]:
    """The filesystem of `uri`, the path pyarrow names the object by ('bucket/key' for S3 and GCS, '/path' for
    HDFS), and the root that, followed by that path, spells the URI again ('s3://', 'hdfs://namenode:8020')."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if not parsed.netloc:
        raise PipelineError(f"{uri} names no bucket or host: write {scheme}://BUCKET/PATH")
    if scheme == "s3":
        return s3_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/"), "s3://"
    if scheme in ("gs", "gcs"):
        return _gcs_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/"), f"{scheme}://"
    root = f"{scheme}://{parsed.netloc}"
    return _hdfs_filesystem(root), parsed.path.rstrip("/") or "/", root


@lru_cache(maxsize=1)
def s3_filesystem() -> pafs.S3FileSystem:
    """S3 (or an S3-compatible server at AWS_ENDPOINT_URL) with the credentials of the AWS variables."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        raise PipelineError(f"{missing} is not set: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if not key and not any(os.environ.get(name) for name in CREDENTIAL_SOURCES):
        raise PipelineError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or AWS_PROFILE for a profile in ~/.aws)")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options = {"access_key": key, "secret_key": secret, "session_token": os.environ.get("AWS_SESSION_TOKEN"),
               "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"), **_endpoint(endpoint)}
    return pafs.S3FileSystem(**{k: v for k, v in options.items() if v}, connect_timeout=CONNECT_TIMEOUT_S,
                             request_timeout=REQUEST_TIMEOUT_S,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS))


def _endpoint(url: str | None) -> dict:
    """pyarrow wants 'host:port' and the scheme apart; AWS_ENDPOINT_URL is a URL ('http://127.0.0.1:9000')."""
    if not url:
        return {}
    parsed = urlparse(url if "://" in url else f"https://{url}")
    if not parsed.netloc:
        raise PipelineError(f"AWS_ENDPOINT_URL={url} is not a URL: write e.g. http://127.0.0.1:9000")
    return {"endpoint_override": parsed.netloc, "scheme": parsed.scheme}


@lru_cache(maxsize=1)
def _gcs_filesystem() -> pafs.FileSystem:
    """Google Cloud Storage with the default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, metadata)."""
    return pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=CONNECT_TIMEOUT_S * ATTEMPTS))


@lru_cache(maxsize=4)
def _hdfs_filesystem(root: str) -> pafs.FileSystem:
    """HDFS through libhdfs (needs a Hadoop client and CLASSPATH, as pyarrow documents)."""
    try:
        return pafs.FileSystem.from_uri(root)[0]
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot open {root} ({first_line(exc)}): install Java and a Hadoop client, set "
                            "JAVA_HOME and CLASSPATH (see pyarrow.fs.HadoopFileSystem)") from None

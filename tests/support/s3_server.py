"""A real S3-compatible server for the tests: moto's server mode on 127.0.0.1 and a free port, in this process; the
fixtures and functions the storage tests share (a module takes a fixture by naming it: `server = s3_server.server`)."""

import json
import logging
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline.storage.filesystems import s3_filesystem

from conftest import sentiment_rows, write_csv

KEY, SECRET = "test-key", "test-secret"
BUCKET = "bucket"


@dataclass(frozen=True)
class S3Server:
    url: str

    @property
    def endpoint(self) -> str:
        return self.url.split("://", 1)[1]

    def admin(self, **settings) -> pafs.S3FileSystem:
        """A filesystem that may create buckets (the code under test may not)."""
        return pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, region="us-east-1", scheme="http",
                                 endpoint_override=self.endpoint, allow_bucket_creation=True, **settings)

    def objects(self, bucket: str) -> list[str]:
        selector = pafs.FileSelector(bucket, recursive=True, allow_not_found=True)
        return sorted(info.path for info in self.admin().get_file_info(selector) if info.is_file)

    def read_only_user(self, bucket: str) -> tuple[str, str]:
        """An IAM user that may read and list `bucket` but not write to it; returns its access key pair. Call
        `require_auth()` afterwards, or the server accepts any request."""
        import boto3

        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=KEY,
                           aws_secret_access_key=SECRET)
        user = f"reader-{uuid.uuid4().hex[:8]}"  # moto's accounts live as long as the process, not the server
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"],
             "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
        iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def require_auth(self, on: bool) -> None:
        """moto's server-mode switch: check signatures and IAM policies from now on (or stop checking)."""
        body = b"0" if on else b"inf"
        request = urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})  # a form body would be parsed away
        urllib.request.urlopen(request).close()


@contextmanager
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request would drown the CLI's stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server():
    with s3_server() as started:
        started.admin().create_dir(BUCKET)
        yield started


@pytest.fixture
def s3(server, monkeypatch, tmp_path, tiny_bert):
    """The AWS variables pointing at the server, a fresh prefix per test, and the working folder in tmp_path (so
    the default local cache folder, artifacts/embeddings, would appear there)."""
    for name, value in {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": server.url, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    s3_filesystem.cache_clear()
    yield server
    s3_filesystem.cache_clear()


def upload(server, local: Path, key: str) -> str:
    with server.admin().open_output_stream(f"{BUCKET}/{key}") as out:
        out.write(local.read_bytes())
    return f"s3://{BUCKET}/{key}"


@pytest.fixture
def data(s3, tmp_path):
    """The same toy table locally and on the server."""
    (tmp_path / "input").mkdir()
    local = write_csv(tmp_path / "input" / "toy.csv", sentiment_rows(90))
    return local, upload(s3, local, f"{tmp_path.name}/data/toy.csv")


def embed_args(model: Path, data: str, out: str) -> list[str]:
    return ["embed", "--data", data, "--model", str(model), "--out", out, "--pooling", "mean,cls",
            "--shard-rows", "40", "--max-length", "16", "--no-progress"]


def one_line_error(run_cli, *args) -> tuple[str, float]:
    started = time.perf_counter()
    code, _, err = run_cli(*args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err, time.perf_counter() - started

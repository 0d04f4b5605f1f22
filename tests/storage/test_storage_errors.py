"""Object storage's refusals, each one line, against a real S3-compatible server on 127.0.0.1 (moto, server mode):
an unreachable endpoint, missing or wrong credentials, a missing bucket, no write permission, a cache another run
holds (the lease), and options that cannot take a URI yet."""

import json
import os
import socket
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest

from pipeline.cache import EmbeddingCache
from pipeline.errors import PipelineError
from pipeline.storage import location
from pipeline.storage.filesystems import s3_filesystem
from pipeline.storage.lease import LEASE_FILE, Lease

from support import s3_server
from support.s3_server import BUCKET, embed_args, one_line_error

server, s3, data = s3_server.server, s3_server.s3, s3_server.data


def test_train_refuses_to_write_runs_to_object_storage(run_cli, data, tiny_bert, tmp_path):
    code, _, err = run_cli("train", "--cache", f"s3://{BUCKET}/x", "--out", f"s3://{BUCKET}/runs",
                           "--model", str(tiny_bert), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "--out of train (the runs folder) cannot be on object" in err


def test_embed_stops_in_one_line_while_another_run_holds_the_cache(run_cli, data, tiny_bert, tmp_path):
    _, remote_data = data
    root = f"s3://{BUCKET}/{tmp_path.name}/cache"
    cache = location(run_cli(*embed_args(tiny_bert, remote_data, root))[1].strip().splitlines()[-1].split()[-1])
    before = EmbeddingCache(cache).manifest()
    with Lease.take(cache) as held:
        err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, root), "--pooling", "max")
    assert f"another run ({held.holder}) is writing {cache}" in err
    assert EmbeddingCache(cache).manifest() == before  # untouched: no shard rewritten, the manifest kept


def test_a_live_lease_of_another_writer_refuses_and_an_expired_one_is_taken_over(s3, tmp_path):
    folder = location(f"s3://{BUCKET}/{tmp_path.name}/locked")
    with Lease.take(folder) as held:
        with pytest.raises(PipelineError, match="another run .* is writing"):
            Lease.take(folder)
        assert json.loads((folder / LEASE_FILE).read_bytes())["holder"] == held.holder
    assert not (folder / LEASE_FILE).exists()  # released
    (folder / LEASE_FILE).write_bytes(json.dumps({"holder": "dead-host:1:x", "expires": time.time() - 1}).encode())
    with Lease.take(folder) as taken:
        assert json.loads((folder / LEASE_FILE).read_bytes())["holder"] == taken.holder


def test_the_lease_of_a_run_killed_on_this_machine_is_taken_over(s3, tmp_path):
    folder = location(f"s3://{BUCKET}/{tmp_path.name}/killed")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = f"{socket.gethostname()}:{gone.stdout.strip()}:x"
    (folder / LEASE_FILE).write_bytes(json.dumps({"holder": holder, "expires": time.time() + 600}).encode())
    with Lease.take(folder) as taken:
        assert taken.holder != holder
    live = f"{socket.gethostname()}:{os.getpid()}:y"
    (folder / LEASE_FILE).write_bytes(json.dumps({"holder": live, "expires": time.time() + 600}).encode())
    with pytest.raises(PipelineError, match=live):
        Lease.take(folder)


def test_a_writer_that_lost_its_lease_does_not_publish_the_manifest(s3, tmp_path):
    folder = location(f"s3://{BUCKET}/{tmp_path.name}/lost")
    store = EmbeddingCache(folder)
    with store.acquire():
        (folder / LEASE_FILE).write_bytes(json.dumps({"holder": "other:2:y", "expires": time.time() + 60}).encode())
        with pytest.raises(PipelineError, match="other:2:y"):
            store.write_manifest(None)
    assert not store.manifest_path.exists()


def test_an_unreachable_endpoint_fails_fast_in_one_line(run_cli, data, tiny_bert, tmp_path, monkeypatch):
    local_data, remote_data = data
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    s3_filesystem.cache_clear()
    for source in (remote_data, str(local_data)):  # failing on the data, or on --out
        err, seconds = one_line_error(run_cli, *embed_args(tiny_bert, source, f"s3://{BUCKET}/c"))
        assert "cannot reach the object store" in err and f"127.0.0.1:{closed}" in err
        assert seconds < 15


def test_missing_credentials_are_one_line(run_cli, data, tiny_bert, monkeypatch):
    _, remote_data = data
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3_filesystem.cache_clear()
    err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, f"s3://{BUCKET}/c"))
    assert "no S3 credentials" in err and "AWS_ACCESS_KEY_ID" in err


def test_a_bucket_that_does_not_exist_is_one_line(run_cli, data, tiny_bert, s3):
    _, remote_data = data
    err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, "s3://no-such-bucket/cache"))
    assert "s3://no-such-bucket/cache" in err and "does not exist" in err
    assert s3.admin().get_file_info("no-such-bucket").type == pafs.FileType.NotFound  # not created on the way
    err, _ = one_line_error(run_cli, *embed_args(tiny_bert, "s3://no-such-bucket/toy.csv", f"s3://{BUCKET}/c"))
    assert "data file not found: s3://no-such-bucket/toy.csv" in err


def test_no_write_permission_is_one_line_and_writes_nothing(run_cli, data, tiny_bert, tmp_path, s3, monkeypatch):
    _, remote_data = data
    key, secret = s3.read_only_user(BUCKET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    s3_filesystem.cache_clear()
    before = s3.objects(BUCKET)
    s3.require_auth(True)
    try:
        err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, f"s3://{BUCKET}/{tmp_path.name}/ro"))
    finally:
        s3.require_auth(False)
    assert "is denied: these credentials may not write it" in err and f"s3://{BUCKET}/{tmp_path.name}/ro" in err
    assert s3.objects(BUCKET) == before


def test_rejected_credentials_are_one_line(run_cli, data, tiny_bert, s3, monkeypatch):
    _, remote_data = data
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3_filesystem.cache_clear()
    s3.require_auth(True)
    try:
        err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, f"s3://{BUCKET}/c"))
    finally:
        s3.require_auth(False)
    assert "denied" in err and "the key or secret is wrong" in err and "AWS_SECRET_ACCESS_KEY" in err


@pytest.mark.parametrize("detail, fix", [
    ("When initiating multiple part upload for key 'y' in bucket 'b': AWS Error NO_SUCH_BUCKET during "
     "CreateMultipartUpload operation: The specified bucket does not exist", "the bucket of s3://b/y does not exist"),
    ("When getting information for key 'y' in bucket 'b': AWS Error UNKNOWN (HTTP status 301) during HeadObject "
     "operation: No response body.", "is in another region than AWS_REGION"),
    ("When reading information for key 'y' in bucket 'b': AWS Error INVALID_ACCESS_KEY_ID during GetObject "
     "operation: The AWS Access Key Id you provided does not exist", "rejected the credentials for s3://b/y"),
    ("line one of something new\nline two", "cannot read s3://b/y (line one of something new): check the URI"),
])
def test_each_sdk_error_gets_its_fix_in_one_line(detail, fix):
    from pipeline.storage.remote import _message

    message = _message(OSError(detail), "s3://b/y", "read")
    assert fix in message and "\n" not in message

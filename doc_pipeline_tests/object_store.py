"""An S3-compatible object store for tests: moto's standalone server, in this process on a
free port, stopped by the test; s3fs (in this process and in the test's subprocesses) finds it
through botocore's own endpoint variable (AWS_ENDPOINT_URL_S3), with fake credentials."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import s3fs
from moto.server import ThreadedMotoServer

from doc_pipeline_tests.processes import free_port

BUCKET = "books"
BLOB_URL = f"s3://{BUCKET}/blobs"


class S3Server:
    """moto's S3 server in this process, on a free port; `stop` may be called more than once."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.running = False

    def start(self) -> None:
        self._server.start()
        self.running = True
        # moto keeps its buckets in this process, also across servers: start empty.
        reset = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=30).close()

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._server.stop()

    def environment(self, home: Path) -> dict[str, str]:
        """What a process needs to use this server: its endpoint and fake credentials, and no
        AWS settings of the machine's (profiles, config files, instance metadata)."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            # botocore retries a refused connection 4 times by default; an outage is seen
            # sooner with one retry, and is classified the same way.
            "AWS_MAX_ATTEMPTS": "2",
        }

    def client(self) -> s3fs.S3FileSystem:
        """The test's own view of the bucket (not the cached instance the code under test
        uses)."""
        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint, key="testing", secret="testing", skip_instance_cache=True
        )


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """A running server with the bucket made; stopped at the end, also on failure."""
    access_log = logging.getLogger("werkzeug")  # moto's server logs every request
    level = access_log.level
    access_log.setLevel(logging.ERROR)
    server = S3Server()
    # fsspec caches file systems by their arguments, not by the environment they read.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        server.start()
        server.client().mkdir(BUCKET)
        yield server
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        access_log.setLevel(level)

"""A real S3-compatible server on loopback for the tests: moto's server mode (an HTTP server speaking the S3 API,
not a mock of boto3), with throwaway credentials that never reach AWS."""

from __future__ import annotations

import os

from moto.server import ThreadedMotoServer

from tests.support import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "darkroom-test", "AWS_SECRET_ACCESS_KEY": "darkroom-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


class S3Server:
    """moto's S3 on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> None:
        """Serve, with the test credentials in this process's environment (boto3 reads them there)."""
        os.environ.update(CREDENTIALS)
        self._server.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()

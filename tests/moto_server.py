"""moto's S3 server over real HTTP on loopback, for the artifact store's tests."""

from __future__ import annotations

from typing import Any

from traindepot.embedded import free_port


class Moto:
    """moto's S3 server on a fixed loopback port; stopped and started again on the same port
    (its buckets live in this process, so they survive a restart)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        """Stop it (nothing when it is not running)."""
        if self.server is not None:
            self.server.stop()
            self.server = None

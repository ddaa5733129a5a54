"""A loopback listener that records connections: proof that a check never connected anywhere."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def tripwire(timeout: float = 0.5) -> Iterator[tuple[int, list[object]]]:
    """Yields (port, connections). A connection made inside the block is in `connections` afterwards."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(timeout)
    connections: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            connections.append(listener.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield listener.getsockname()[1], connections
        thread.join()
    finally:
        listener.close()

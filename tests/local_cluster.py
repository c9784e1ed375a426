"""Multi-worker clusters on this machine, for the tests and benchmarks of multi-worker
training (the training operator makes a real cluster's ``TF_CONFIG``)."""

from __future__ import annotations

import json
import socket


def local_cluster(workers: int) -> list[str]:
    """The ``TF_CONFIG`` of each of ``workers`` processes on this machine, on free ports of
    127.0.0.1 (tests and benchmarks of multi-worker training; the operator makes a real
    cluster's)."""
    sockets = [socket.socket() for _ in range(workers)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    addresses = [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    for sock in sockets:
        sock.close()
    return [
        json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
        for index in range(workers)
    ]

"""A free TCP port on 127.0.0.1 (accelerate's rendezvous, the MLflow UI, test servers)."""
import socket


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; another process could take it before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

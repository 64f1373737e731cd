"""Wait until something on 127.0.0.1:5672 answers the AMQP 0-9-1 greeting (at most 120 s)."""

import os
import socket
import sys
import time

HOST = os.environ.get("SPAKKY_RABBITMQ__HOST", "127.0.0.1")
PORT = int(os.environ.get("SPAKKY_RABBITMQ__PORT", "5672"))
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
METHOD_FRAME = 1


def answers() -> bool:
    """True when the broker replies to the protocol header with a method frame."""
    try:
        with socket.create_connection((HOST, PORT), timeout=2) as connection:
            connection.settimeout(2)
            connection.sendall(PROTOCOL_HEADER)
            reply = connection.recv(7)
    except OSError:
        return False
    return len(reply) == 7 and reply[0] == METHOD_FRAME


def main(limit: float = 120.0) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if answers():
            return 0
        time.sleep(1)
    print(f"RabbitMQ on {HOST}:{PORT} did not answer within {limit:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

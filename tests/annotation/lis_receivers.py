"""Real LIS receivers on loopback for the tests: a FHIR endpoint (http.server in a thread)
and an MLLP listener (a socket in a thread) that answer like a LIS and keep what they got.

Each can be "down" before it is started: :func:`refusing_port` holds a port bound but not
listening, so a connection to it is refused, until the receiver takes the port over.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hl7apy.core import Message
from hl7apy.parser import parse_message

MLLP_START, MLLP_END = b"\x0b", b"\x1c\r"


def refusing_port() -> socket.socket:
    """A loopback port that refuses connections (bound, never listening). Close the socket
    to free the port for a receiver."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class FhirReceiver:
    """POSTed Bundles, by the Bundle.identifier a delivery carries; answers ``status``."""

    port: int = 0
    status: int = 200
    outcome: str = ""  # OperationOutcome diagnostics for a refusal
    received: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> FhirReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body.decode()}
                )
                if receiver.status < 300:
                    answer = {"resourceType": "Bundle", "type": "transaction-response"}
                else:
                    answer = {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {
                                "severity": "error",
                                "code": "invalid",
                                "diagnostics": receiver.outcome,
                            }
                        ],
                    }
                data = json.dumps(answer).encode()
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def bundles(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.received]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def ack_for(message: Any, code: str, text: str = "") -> str:
    """An HL7 ACK to ``message``, built with hl7apy."""
    ack = Message("ACK", version="2.5")
    ack.msh.msh_3 = "LIS"
    ack.msh.msh_4 = "LAB"
    ack.msh.msh_5 = message.msh.msh_3.value
    ack.msh.msh_6 = message.msh.msh_4.value
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = f"ACK{message.msh.msh_10.value}"
    ack.msh.msh_11 = "P"
    ack.msh.msh_12 = "2.5"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = message.msh.msh_10.value
    if text:
        ack.msa.msa_3 = text
    return str(ack.to_er7())


@dataclass
class MllpReceiver:
    """Framed HL7 messages, answered with an ACK (``ack_code``) on the same connection."""

    port: int = 0
    ack_code: str = "AA"
    ack_text: str = ""
    received: list[str] = field(default_factory=list)
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> MllpReceiver:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(8)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while MLLP_END not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    continue
                if MLLP_END not in data:
                    continue
                er7 = data[data.index(MLLP_START) + 1 : data.index(MLLP_END)].decode()
                self.received.append(er7)
                message = parse_message(er7, find_groups=False)
                conn.sendall(
                    MLLP_START + ack_for(message, self.ack_code, self.ack_text).encode() + MLLP_END
                )

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()

"""Certificates and loopback TLS servers for the TLS-policy tests (DANE, MTA-STS).

`Pki` makes a CA and issues server certificates from it (cryptography directly: tests
may, `src/` outside `mailward.crypto` may not). `tls_server` accepts TLS connections
on 127.0.0.1 with a given chain until the block ends; `https_server` serves MTA-STS
policies over HTTPS, choosing the answer by the Host header.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailward.crypto import tls

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def spki(self) -> bytes:
        return self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class Pki:
    """A test CA ("root") that issues server certificates."""

    def __init__(self, name: str = "mailward test CA") -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        self.ca = Issued(cert, key)

    def issue(
        self,
        *hostnames: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hostnames[0]))
            .issuer_name(self.ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - datetime.timedelta(hours=1))
            .not_valid_after(not_after or NOW + datetime.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.key.public_key()),
                critical=False,
            )
            .sign(self.ca.key, hashes.SHA256())
        )
        return Issued(cert, key)

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.ca.pem)
        return path


def write_server_files(directory: Path, leaf: Issued, *chain: Issued) -> tuple[Path, Path]:
    """cert.pem (leaf then `chain`) and key.pem (0600) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(leaf.pem + b"".join(c.pem for c in chain))
    key.write_bytes(leaf.key_pem())
    key.chmod(0o600)
    return cert, key


def _serve_forever(
    listener: socket.socket, stop: threading.Event, handle: Callable[[socket.socket], None]
) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        if stop.is_set():
            conn.close()
            return
        with conn, contextlib.suppress(OSError):  # ssl.SSLError too: a client gave up
            handle(conn)


@contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 with this chain: handshakes, then waits for the
    client to close. Yields the port."""
    ctx = tls.server_context(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls_conn:
            while tls_conn.recv(1024):
                pass

    thread = threading.Thread(target=_serve_forever, args=(listener, stop, handle), daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        socket.create_connection(("127.0.0.1", port)).close()  # wake accept()
        thread.join(10)
        listener.close()


# (status, headers, body) by policy domain (the Host header without "mta-sts.")
Response = tuple[int, list[tuple[str, str]], bytes]


@contextmanager
def https_server(cert: Path, key: Path, responses: dict[str, Response]) -> Iterator[int]:
    """HTTPS on 127.0.0.1 answering GET by Host: `responses["example.test"]` for
    Host mta-sts.example.test. A "Transfer-Encoding: chunked" header makes the body
    go out chunked; no Content-Length header means close-delimited. Yields the port."""
    ctx = tls.server_context(cert, key)
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0]
            seen.append(f"{host}{self.path}")
            domain = host.removeprefix("mta-sts.")
            status, headers, body = responses.get(domain, (404, [], b""))
            self.send_response(status)
            chunked = False
            for name, value in headers:
                self.send_header(name, value)
                chunked = chunked or (name.lower() == "transfer-encoding" and value == "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            if chunked:
                for i in range(0, len(body), 1000):
                    piece = body[i : i + 1000]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.wfile.write(body)
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[socket.socket, object]:
            conn, address = super().get_request()
            return ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), address

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that rejected our certificate

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)

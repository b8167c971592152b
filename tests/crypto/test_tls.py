"""TLS policy (crypto/tls.py) checked against a real `openssl s_client` and `s_server`."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.crypto.tls import (
    TlsConfigError,
    client_context,
    describe_tls,
    generate_self_signed,
    server_context,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
HOST = "mail.example.test"


@pytest.fixture(scope="module")
def ecdsa_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ecdsa")
    cert, key = d / "cert.pem", d / "key.pem"
    generate_self_signed([HOST, "127.0.0.1"], cert, key)
    return cert, key


@pytest.fixture(scope="module")
def rsa_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An RSA certificate made by OpenSSL itself (not by our code)."""
    if OPENSSL is None:
        pytest.skip("openssl binary not installed")
    d = tmp_path_factory.mktemp("rsa")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", f"/CN={HOST}",
         "-addext", f"subjectAltName=DNS:{HOST}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


class OneShotServer:
    """Accepts one connection on loopback, handshakes with `ctx`, records the outcome."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.port: int = self.sock.getsockname()[1]
        self.outcome: tuple[str, str] | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError as e:
            self.error = f"accept: {e}"
            return
        conn.settimeout(30)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.outcome = describe_tls(tls)
                tls.sendall(b"hello\n")
                # close_notify, so the client sees a clean close
                with contextlib.suppress(ssl.SSLError, OSError):
                    tls.unwrap()
        except (ssl.SSLError, OSError) as e:
            self.error = str(e)
        finally:
            conn.close()

    def __enter__(self) -> OneShotServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=40)
        self.sock.close()


def s_client(port: int, *args: str, cafile: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    cmd = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST, *args]
    if cafile is not None:
        cmd += ["-CAfile", str(cafile), "-verify_return_error", "-verify_hostname", HOST]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


@pytest.fixture
def server(ecdsa_pair: tuple[Path, Path]) -> Iterator[OneShotServer]:
    with OneShotServer(server_context(*ecdsa_pair)) as srv:
        yield srv


# --------------------------------------------------------------------------- policy


def test_context_policy_flags(ecdsa_pair: tuple[Path, Path]) -> None:
    for ctx in (server_context(*ecdsa_pair), client_context()):
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
        for flag in (
            ssl.OP_NO_COMPRESSION,
            ssl.OP_NO_RENEGOTIATION,
            ssl.OP_CIPHER_SERVER_PREFERENCE,
            ssl.OP_SINGLE_ECDH_USE,
        ):
            # OP_SINGLE_ECDH_USE is 0 on OpenSSL >= 1.1 (always on), so test it as a no-op.
            assert ctx.options & flag == flag, flag
        tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12
        for c in tls12:
            assert c["aead"], c["name"]
            assert c["kea"] == "kx-ecdhe", c["name"]
            assert "CBC" not in c["description"] and "SHA1" not in c["name"], c["name"]


def test_client_context_verifies_by_default() -> None:
    ctx = client_context()
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    loose = client_context(verify=False)
    assert loose.verify_mode is ssl.CERT_NONE and not loose.check_hostname


# --------------------------------------------------------------------------- openssl


@needs_openssl
@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_openssl_modern_versions_succeed_and_verify(
    server: OneShotServer, ecdsa_pair: tuple[Path, Path], flag: str
) -> None:
    result = s_client(server.port, flag, cafile=ecdsa_pair[0])
    server.thread.join(timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout
    assert server.error is None
    assert server.outcome is not None
    version, cipher = server.outcome
    assert version == {"-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}[flag]
    assert "GCM" in cipher or "CHACHA20" in cipher


@needs_openssl
@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_openssl_old_versions_refused(server: OneShotServer, flag: str) -> None:
    # Debian's OpenSSL will not even offer TLS 1.0/1.1 at its default security level;
    # SECLEVEL=0 makes the client really send an old ClientHello, so the refusal we
    # see is the server's, proven by the server-side "unsupported protocol" error.
    result = s_client(server.port, flag, "-cipher", "DEFAULT@SECLEVEL=0")
    server.thread.join(timeout=30)
    assert result.returncode != 0
    assert server.outcome is None
    assert server.error is not None and "UNSUPPORTED_PROTOCOL" in server.error.upper()


@needs_openssl
def test_openssl_cbc_only_client_refused(server: OneShotServer) -> None:
    # ECDHE-ECDSA suites that would work with our ECDSA certificate, but CBC.
    cbc = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA"
    result = s_client(server.port, "-tls1_2", "-cipher", cbc)
    server.thread.join(timeout=30)
    assert result.returncode != 0
    assert server.outcome is None
    assert server.error is not None and "NO_SHARED_CIPHER" in server.error.upper()


@needs_openssl
def test_openssl_same_key_type_with_aead_succeeds(server: OneShotServer) -> None:
    """Control for the CBC test: the certificate is not why CBC was refused."""
    result = s_client(server.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    server.thread.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert server.outcome == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")


@needs_openssl
def test_openssl_rsa_key_exchange_refused(rsa_pair: tuple[Path, Path]) -> None:
    with OneShotServer(server_context(*rsa_pair)) as srv:
        result = s_client(srv.port, "-tls1_2", "-cipher", "AES128-GCM-SHA256:AES256-GCM-SHA384")
        srv.thread.join(timeout=30)
    assert result.returncode != 0
    assert srv.error is not None and "NO_SHARED_CIPHER" in srv.error.upper()
    with OneShotServer(server_context(*rsa_pair)) as srv:
        result = s_client(srv.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
        srv.thread.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert srv.outcome == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")


@needs_openssl
def test_client_context_against_openssl_s_server(
    ecdsa_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """Our client policy against a server we did not write; also checks verification."""
    assert OPENSSL is not None
    cert, key = ecdsa_pair
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen(
        [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
         "-key", str(key), "-naccept", "2", "-quiet"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = 100
        while deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                deadline -= 1
                threading.Event().wait(0.05)
        # s_server counted that probe as one of its two accepts.
        ctx = client_context(cert)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            version, cipher = describe_tls(tls)
        assert version == "TLSv1.3"
        assert cipher.startswith("TLS_")
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_python_client_server_roundtrip_and_hostname_check(
    ecdsa_pair: tuple[Path, Path],
) -> None:
    cert, _ = ecdsa_pair
    with (
        OneShotServer(server_context(*ecdsa_pair)) as srv,
        socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw,
        client_context(cert).wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        assert tls.recv(6) == b"hello\n"
        assert describe_tls(tls)[0] == "TLSv1.3"
    with (
        OneShotServer(server_context(*ecdsa_pair)) as srv,
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw,
    ):
        client_context(cert).wrap_socket(raw, server_hostname="other.example.test")


def test_describe_tls_before_handshake_raises() -> None:
    obj = client_context(verify=False).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    with pytest.raises(ValueError):
        describe_tls(obj)


# --------------------------------------------------------------------------- files


def test_generate_self_signed_files_and_names(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    generate_self_signed(["a.example.test", "b.example.test"], cert, key, days=10)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example.test", "b.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == []
    public = parsed.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert 10 <= lifetime.days <= 11
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError):
        generate_self_signed([], cert, key)


def test_missing_files_named(tmp_path: Path, ecdsa_pair: tuple[Path, Path]) -> None:
    cert, key = ecdsa_pair
    with pytest.raises(TlsConfigError) as e:
        server_context(tmp_path / "nope.pem", key)
    assert e.value.path == tmp_path / "nope.pem" and "nope.pem" in str(e.value)
    with pytest.raises(TlsConfigError) as e:
        server_context(cert, tmp_path / "nokey.pem")
    assert e.value.path == tmp_path / "nokey.pem"


def test_mismatched_key_named(tmp_path: Path, ecdsa_pair: tuple[Path, Path]) -> None:
    other_cert, other_key = tmp_path / "c.pem", tmp_path / "k.pem"
    generate_self_signed([HOST], other_cert, other_key)
    with pytest.raises(TlsConfigError) as e:
        server_context(ecdsa_pair[0], other_key)
    assert e.value.path == other_key
    assert "does not match" in str(e.value) and str(ecdsa_pair[0]) in str(e.value)


def test_garbage_and_unsafe_files_named(tmp_path: Path, ecdsa_pair: tuple[Path, Path]) -> None:
    cert, key = ecdsa_pair
    junk = tmp_path / "junk.pem"
    junk.write_text("not pem\n")
    junk.chmod(0o600)
    with pytest.raises(TlsConfigError) as e:
        server_context(junk, key)
    assert e.value.path == junk and "certificate" in e.value.message
    with pytest.raises(TlsConfigError) as e:
        server_context(cert, junk)
    assert e.value.path == junk and "private key" in e.value.message
    loose = tmp_path / "loose.pem"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(TlsConfigError) as e:
        server_context(cert, loose)
    assert e.value.path == loose and "chmod 600" in e.value.message


@needs_openssl
def test_encrypted_key_refused_without_prompting(
    tmp_path: Path, ecdsa_pair: tuple[Path, Path]
) -> None:
    assert OPENSSL is not None
    cert, key = ecdsa_pair
    enc = tmp_path / "enc.pem"
    subprocess.run(
        [OPENSSL, "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret", "-out", str(enc)],
        check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    enc.chmod(0o600)
    with pytest.raises(TlsConfigError) as e:
        server_context(cert, enc)
    assert e.value.path == enc and "encrypted" in e.value.message

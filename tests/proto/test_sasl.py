"""SASL PLAIN (RFC 4616) and LOGIN, and the RFC 4954 base64 layer (proto.sasl)."""

from __future__ import annotations

import base64

import pytest

from mailward.proto.sasl import (
    LoginMechanism,
    PlainMechanism,
    SaslCancelled,
    SaslChallenge,
    SaslCredentials,
    SaslMalformed,
    decode_response,
    encode_challenge,
    new_mechanism,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_decode_response() -> None:
    assert decode_response(b64(b"hello")) == b"hello"
    assert decode_response("") == b""
    assert decode_response("=", initial=True) == b""
    with pytest.raises(SaslMalformed):
        decode_response("=")  # "=" means empty only as an initial response
    with pytest.raises(SaslCancelled):
        decode_response("*")
    for bad in ("abc", "ab!d", "YWJj ZA==", "YQ", "YQ=", "Y===", "YWJj\n"):
        with pytest.raises(SaslMalformed):
            decode_response(bad)


def test_encode_challenge() -> None:
    assert encode_challenge(b"Username:") == "VXNlcm5hbWU6"
    assert encode_challenge(b"") == ""


def test_plain_with_initial_response() -> None:
    m = PlainMechanism()
    assert m.start(b"\x00alice\x00s3cret") == SaslCredentials("PLAIN", "", "alice", "s3cret")
    m = PlainMechanism()
    assert m.start(b"admin\x00bob\x00pw") == SaslCredentials("PLAIN", "admin", "bob", "pw")
    m = PlainMechanism()
    assert m.start("\x00jörg\x00pässword".encode()) == SaslCredentials(
        "PLAIN", "", "jörg", "pässword"
    )


def test_plain_without_initial_response() -> None:
    m = PlainMechanism()
    assert m.start(None) == SaslChallenge(b"")
    assert m.step(b"\x00u\x00p") == SaslCredentials("PLAIN", "", "u", "p")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"alice",
        b"\x00alice",
        b"\x00\x00pw",
        b"\x00alice\x00",
        b"a\x00b\x00c\x00d",
        b"\x00\xff\x00p",
    ],
)
def test_plain_malformed(message: bytes) -> None:
    with pytest.raises(SaslMalformed):
        PlainMechanism().start(message)


def test_login() -> None:
    m = LoginMechanism()
    assert m.start(None) == SaslChallenge(b"Username:")
    assert m.step(b"alice") == SaslChallenge(b"Password:")
    assert m.step(b"pw") == SaslCredentials("LOGIN", "", "alice", "pw")
    m = LoginMechanism()
    assert m.start(b"bob") == SaslChallenge(b"Password:")  # initial response = user name
    assert m.step(b"x") == SaslCredentials("LOGIN", "", "bob", "x")
    with pytest.raises(SaslMalformed):
        LoginMechanism().start(b"")
    with pytest.raises(SaslMalformed):
        LoginMechanism().start(b"\xff")


def test_password_not_in_repr() -> None:
    assert "hunter2" not in repr(SaslCredentials("PLAIN", "", "u", "hunter2"))


def test_new_mechanism() -> None:
    assert isinstance(new_mechanism("plain"), PlainMechanism)
    assert isinstance(new_mechanism("LOGIN"), LoginMechanism)
    assert new_mechanism("CRAM-MD5") is None
    a, b = new_mechanism("LOGIN"), new_mechanism("LOGIN")
    assert a is not b  # one exchange per instance

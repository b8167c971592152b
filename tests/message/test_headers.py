"""Header-section reading used by the submission From: check."""

import pytest

from mailward.message.headers import (
    MAX_HEADER_SECTION,
    HeaderSectionTooLarge,
    header_section,
    header_values,
    mailbox_addresses,
)


def test_section_ends_at_first_blank_line() -> None:
    raw = b"From: a@x\r\nSubject: hi\r\n\r\nFrom: body@y\r\n"
    assert header_section(raw, complete=True) == b"From: a@x\r\nSubject: hi\r\n"


def test_folded_and_repeated_fields() -> None:
    section = b"From: Alice\r\n <alice@example.test>\r\nTo: b@x\r\nfrom: second@x\r\n"
    assert header_values(section, "From") == ["Alice <alice@example.test>", "second@x"]
    assert mailbox_addresses(header_values(section, "from")) == [
        "alice@example.test",
        "second@x",
    ]


def test_message_without_body_is_all_headers() -> None:
    assert header_section(b"From: a@x\r\n", complete=True) == b"From: a@x\r\n"


def test_unterminated_huge_section_is_refused() -> None:
    with pytest.raises(HeaderSectionTooLarge):
        header_section(b"X: " + b"a" * (MAX_HEADER_SECTION + 10), complete=False)


def test_address_list_with_display_names_and_groups() -> None:
    values = ['"Smith, J" <j@x.test>, other@y.test']
    assert mailbox_addresses(values) == ["j@x.test", "other@y.test"]

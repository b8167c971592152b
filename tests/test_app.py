"""`serve` refuses a bad configuration before binding any port."""

import re
from pathlib import Path

import pytest

from mailward.app import serve
from mailward.config.load import render_toml
from mailward.config.schema import CONFIG_FILE, Config


@pytest.mark.parametrize(
    ("bad_line", "key"),
    [
        ("message_size = -5", "limits.message_size"),
        ('bare_line_endings = "sometimes"', "smtp.bare_line_endings"),
        ("colour = 3", "limits.colour"),
    ],
    ids=["negative-size", "bad-literal", "unknown-key"],
)
def test_bad_config_exits_2_naming_key_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_line: str, key: str
) -> None:
    section, name = key.split(".")
    text = render_toml(Config())
    if re.search(rf"^{name} = ", text, re.M):
        text = re.sub(rf"^{name} = .*$", bad_line, text, count=1, flags=re.M)
    else:
        text = text.replace(f"[{section}]\n", f"[{section}]\n{bad_line}\n", 1)
    config_path = tmp_path / CONFIG_FILE
    config_path.write_text(text)
    assert serve(tmp_path) == 2
    err = capsys.readouterr().err
    assert key in err and str(config_path) in err
    assert not (tmp_path / "mailward.db").exists()  # nothing was opened, nothing bound


def test_missing_config_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve(tmp_path) == 2
    assert "mailward init" in capsys.readouterr().err


def test_missing_certificate_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / CONFIG_FILE).write_text(render_toml(Config()))
    assert serve(tmp_path) == 2
    assert "cert.pem" in capsys.readouterr().err

"""Secrets kept out of text (hasync.masking): Masker by known value and by shape, mask_url, url_secrets, one_line."""

from __future__ import annotations

import pytest

from hasync.masking import MASK, Masker, is_secret_key, mask_url, one_line, secrets_in, url_secrets


def test_masker() -> None:
    m = Masker(["tok3n-value-abcdef", "pw"])
    assert m.text("a tok3n-value-abcdef b") == "a *** b"
    assert m.text("pw is short: not replaced everywhere") == "pw is short: not replaced everywhere"
    assert (
        m.text("see postgresql://u:p%40ss@db:5432/x?sslmode=require")
        == "see postgresql://u:***@db:5432/x?sslmode=require"
    )
    assert m.text("GET /x?user=a&password=abc&y=1") == "GET /x?user=a&password=***&y=1"
    assert m.text('secret="a b c" other=1') == "secret=*** other=1"
    assert m.text("Authorization: Bearer abcdefgh12345") == "Authorization: Bearer ***"
    assert m.text("no secrets here token_count") == "no secrets here token_count"
    doc = {"password_hash": "x", "token_file": "secrets/pair.token", "nested": [{"api_key": 5, "ok": None}]}
    masked = {"password_hash": "***", "token_file": "secrets/pair.token", "nested": [{"api_key": "***", "ok": None}]}
    assert m.json(doc) == masked


def test_mask_url() -> None:
    assert mask_url("postgresql://hasync:s3cr%40t@db:5432/alarms") == "postgresql://hasync:***@db:5432/alarms"
    assert mask_url("postgresql://hasync@db/alarms") == "postgresql://hasync@db/alarms"
    assert mask_url("postgresql://db/alarms?user=u&password=pw&sslmode=require") == (
        "postgresql://db/alarms?user=u&password=***&sslmode=require"
    )
    assert mask_url("http://u:p@am:9093") == "http://u:***@am:9093"


def test_known_values_longest_first_and_short_ones_left() -> None:
    m = Masker(["abcd", "abcdef", "abc", ""])
    assert m.known == ("abcdef", "abcd"), "shorter than MIN_SECRET_LEN: not replaced everywhere"
    assert m.text("abcdefg abcd abc") == "***g *** abc"
    assert Masker(["a.b*c"]).text("x a.b*c axbbc") == "x *** axbbc", "a known value is literal text, not a pattern"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("x https://u:p4ss@h:1/p?q y", "x https://u:***@h:1/p?q y"),
        ("postgresql:/u:pw1@h/db", "postgresql:/u:***@h/db"),  # a mistyped scheme: one slash
        ("webhook:http://u:pw2@h/x", "webhook:***@h/x"),  # a kind written before the scheme
        ("u:pw3@host", "u:***@host"),  # no scheme at all
        ("http://user@h/x", "http://user@h/x"),  # a user, no password
        ('{"k":"a@b"}', '{"k":"a@b"}'),  # JSON, not a user:password
    ],
)
def test_url_passwords_are_masked_also_when_the_scheme_is_mistyped(text: str, masked: str) -> None:
    assert Masker().text(text) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("api_key=abc123 x", "api_key=*** x"),
        ("API-KEY=abc", "API-KEY=***"),
        ('password="a b" z', "password=*** z"),
        ("x?access_token=zz&y=1", "x?access_token=***&y=1"),
        ("GET /db?pwd=zz&a=1", "GET /db?pwd=***&a=1"),
        ("line1 ok\npassword=x\nline3 token", "line1 ok\npassword=***\nline3 token"),
        # lowering İ changes the length: positions in the lowered text would point into the next line
        ("İ" * 20 + " password=zz\nthe next line, long enough", "İ" * 20 + " password=***\nthe next line, long enough"),
        ("token_count=3", "token_count=***"),  # a secret-named key, whatever follows the word
        ("no secrets here token_count", "no secrets here token_count"),
    ],
)
def test_values_after_secret_named_keys(text: str, masked: str) -> None:
    assert Masker().text(text) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ('{"db_password": "s3", "n": 1}', '{"db_password": "***", "n": 1}'),
        ('{"token":"a\\"b", "user": "u"}', '{"token":"***", "user": "u"}'),  # an escaped quote inside
        ('{"name": "password"}', '{"name": "password"}'),  # the word as a value, not a key
    ],
)
def test_json_values_of_secret_keys_in_text(text: str, masked: str) -> None:
    assert Masker().text(text) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
        ("Bearer abcdefgh12345 rest", "Bearer *** rest"),
        ("Bearer short", "Bearer short"),  # under 8 characters: a word, not a credential
    ],
)
def test_authorization_credentials(text: str, masked: str) -> None:
    assert Masker().text(text) == masked


def test_json_masks_secret_keys_whatever_their_value_type() -> None:
    doc = {"password": True, "token": None, "url": "http://a:b@h", "list": ["Bearer abcdefghij"], 3: {"secret": 1}}
    assert Masker().json(doc) == {
        "password": True,  # a flag says nothing secret
        "token": None,
        "url": "http://a:***@h",
        "list": ["Bearer ***"],
        3: {"secret": MASK},
    }


def test_secret_keys() -> None:
    assert is_secret_key("PASSWORD") and is_secret_key("api-key") and is_secret_key("password_hash")
    assert not is_secret_key("password_file") and not is_secret_key("token_dir") and not is_secret_key("name")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@[::1/db", "postgresql://u:***@[::1/db"),  # urlsplit refuses it: the pattern masks
        ("postgresql:/u:typo@h", "postgresql:/u:***@h"),
        ("postgresql://db/x?PASSWORD=a%20b", "postgresql://db/x?PASSWORD=***"),
        ("sqlite", "sqlite"),
    ],
)
def test_mask_url_when_the_url_does_not_split(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("postgresql://u:p%40ss@h/db", ["p%2540ss", "p%40ss", "p@ss"]),  # as written, decoded and quoted
        ("postgresql://u:p@h/db?password=q%20r", ["q%20r", "q r", "p"]),
        ("postgresql://u:pw@[::1/db?password=x1", ["pw", "x1"]),  # cannot be split
        ("postgresql:/u:typo@h", ["typo"]),
        ("http://u@h", []),
        ("sqlite", []),
    ],
)
def test_url_secrets_in_every_form_a_driver_may_quote(url: str, secrets: list[str]) -> None:
    found = url_secrets(url)
    assert sorted(found) == sorted(secrets)
    assert [len(s) for s in found] == sorted(map(len, found), reverse=True), "longest first: replaced whole"


def test_one_line() -> None:
    assert one_line("  \n first   line\t x \n second", ["x"]) == "first line ***"
    assert one_line(ValueError("")) == "ValueError", "an empty message names its type"
    assert one_line(KeyError("pw b"), ["pw"]) == "'*** b'"
    assert one_line(OSError("a\nb")) == "a"


def test_secrets_in_a_config_document() -> None:
    doc = {"alarms": {"store": "postgresql://u:pw@h/db"}, "token": "t", "token_file": "f", "l": [{"password": "p"}]}
    assert secrets_in(doc) == ["pw", "t", "p"]

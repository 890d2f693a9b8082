"""collect/configs.py: a config re-emitted by tomli-w parses back to the same values, secrets masked, comments gone."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

from hasync.collect import masked_config
from hasync.masking import MASK, Masker

# Every shape a config may take: nested and dotted tables, arrays of tables with sub-tables, inline
# tables, quoted keys, escapes (a raw DEL is not allowed in TOML), dates and times, empty arrays.
SHAPES = """\
top = "v"
[cluster]
source = "c \\"quoted\\" \\u007f \\u0001 tab\\t é"
n = 3
f = 1.5
big = -9_223_372_036_854_775_808
flag = true
list = ["a", "b"]
empty = []
nested_lists = [[1, 2], ["x"]]
inline_list = [{a = 1}, {b = [2, 3]}]
when = 1979-05-27T07:32:00.999-08:00
local_when = 1979-05-27T07:32:00
day = 1979-05-27
at = 07:32:00
[node.deep.deeper]
x = 1
[[sync.dirs]]
name = "conf"
path = "data/conf"
[[sync.dirs]]
name = "udf"
path = "data/udf"
exclude = ["*.swp", "*~"]
[sync.dirs.sub]
k = "v"
[[sync.dirs]]
name = "long"
path = "data/a-path-long-enough-that-tomli-w-cannot-write-this-table-inline-on-one-line-of-one-hundred"
[sync]
exclude = ["*.swp"]
"key with space" = { inline = 1 }
"ünï.cödé" = "dotted in quotes"
"""


def emitted(tmp_path: Path, text: str, masker: Masker | None = None) -> str:
    path = tmp_path / "hasync.toml"
    path.write_text(text, encoding="utf-8")
    return masked_config(path, masker or Masker())


def test_values_round_trip(tmp_path: Path) -> None:
    out = emitted(tmp_path, SHAPES)
    assert out.startswith(f"# hasync.toml as read by hasync collect: secrets replaced by {MASK}, comments left out\n")
    assert tomllib.loads(out) == tomllib.loads(SHAPES)


def test_special_floats_round_trip(tmp_path: Path) -> None:
    back = tomllib.loads(emitted(tmp_path, "a = nan\nb = inf\nc = -inf\nd = -0.0\ne = 1e300\n"))
    assert math.isnan(back["a"]) and back["b"] == math.inf and back["c"] == -math.inf
    assert math.copysign(1, back["d"]) == -1 and back["e"] == 1e300


def test_secrets_masked_in_nested_tables_and_arrays_of_tables(tmp_path: Path) -> None:
    text = """\
# a comment that quotes the old password: hunter2-old
note = "says known-secret-value inside"
[security]
token_file = "secrets/pair.token"
password_hash = "$argon2id$v=19$m=65536$abc"
[alarms]
store_url = "postgresql://hasync:s3cr3t-pw@db.example/hasync"
[[alarms.notify]]
url = "https://hooks.example/x?token=tok-in-query&y=1"
headers = { Authorization = "Bearer abcdefgh12345", api_key = "k-123456" }
[[alarms.notify]]
url = "smtp://mailer:mail-pw-9@smtp.example"
secret = 42
nested = [{ private_key = "pk-abcdef", ok = true }]
"""
    masker = Masker(["known-secret-value"])
    out = emitted(tmp_path, text, masker)
    for secret in ("hunter2-old", "$argon2id", "s3cr3t-pw", "tok-in-query", "abcdefgh12345", "k-123456"):
        assert secret not in out
    for secret in ("mail-pw-9", "pk-abcdef", "known-secret-value", "42"):
        assert secret not in out
    back = tomllib.loads(out)
    assert back["security"] == {"token_file": "secrets/pair.token", "password_hash": MASK}
    assert back["alarms"]["store_url"] == f"postgresql://hasync:{MASK}@db.example/hasync"
    first, second = back["alarms"]["notify"]
    assert first["url"] == f"https://hooks.example/x?token={MASK}&y=1"
    assert first["headers"] == {"Authorization": f"Bearer {MASK}", "api_key": MASK}
    assert second == {
        "url": f"smtp://mailer:{MASK}@smtp.example",
        "secret": MASK,
        "nested": [{"private_key": MASK, "ok": True}],
    }
    assert back["note"] == f"says {MASK} inside"
    assert "#" not in out.split("\n", 2)[2]  # the head line is the only comment


def test_unreadable_config_is_left_out_never_copied(tmp_path: Path) -> None:
    out = emitted(tmp_path, 'password = "plain-secret"\nbroken = [\n')
    assert out == "# hasync.toml: not included, it cannot be read as TOML now (TOMLDecodeError)\n"
    assert masked_config(tmp_path / "absent.toml", Masker()).endswith("(FileNotFoundError)\n")

"""Secrets kept out of every text hasync shows or writes: masking by known value and by shape, URL passwords.

`Masker` replaces the pair token, configured passwords, passwords in URLs and values after secret-named keys by
``***``; `mask_url` shows a configured URL with its password masked; `url_secrets` finds a URL's password in the
forms a driver may quote it; `one_line` turns a driver's message into one line without them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
# -- masking -----------------------------------------------------------------------------------------------------
_SECRET_WORDS = r"(?:password|passwd|passphrase|secret|token|api[_-]?key|private[_-]?key|credential)"
SECRET_KEY_RE = re.compile(_SECRET_WORDS, re.IGNORECASE)
# user:PASSWORD@ in any text (group 2 is the password): after scheme://, after a mistyped scheme
# ("postgresql:/u:", "webhook:http://u:") or with none at all; a quote before the colon is JSON ("k":"a@b"), and
# "//" after it is a scheme ("http://user@h"), not a password
URL_PASSWORD_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*:/+[^\s:/@\"']*|[^\s:/@\"']+):(?!//)([^\s@]*)@", re.IGNORECASE)
_QUERY_PW_RE = re.compile(r"([?&;](?:pwd|access_token|" + _SECRET_WORDS[3:-1] + r")=)[^&\s#\"']*", re.IGNORECASE)
_KV_RE = re.compile("(" + _SECRET_WORDS + r"[\w.-]*=)(\"(?:[^\"\\\n]|\\.)*\"|[^\s&\"']*)", re.IGNORECASE)
_JSON_KV_RE = re.compile(r'("[^"\n]*' + _SECRET_WORDS + r'[^"\n]*"\s*:\s*)"(?:[^"\\\n]|\\.)*"', re.IGNORECASE)
_AUTH_RE = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEYWORD_RE = re.compile(r"pass|secret|token|pwd|api[_-]?key|private[_-]?key|credential")  # on lowered text


def _keyed_line(s: str) -> str:
    s = _QUERY_PW_RE.sub(r"\1" + MASK, s)
    s = _KV_RE.sub(r"\1" + MASK, s)
    return _JSON_KV_RE.sub(r'\1"' + MASK + '"', s)


MIN_SECRET_LEN = 4  # shorter known values are not replaced everywhere (they would wreck the text); patterns still apply


def is_secret_key(key: str) -> bool:
    """A key whose value is a secret: password, password_hash, token, secret, api_key ... but not a ``*_file`` path."""
    return bool(SECRET_KEY_RE.search(key)) and not key.lower().endswith(("_file", "_path", "_dir"))


class Masker:
    """Replaces secrets by ``***``: known values (the pair token, the config's passwords) and secret-shaped text.

    Every pattern works within one line, so any text made of whole lines can be masked in
    one call, however many lines it holds.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        self.known = tuple(known)
        self._known_re = re.compile("|".join(re.escape(s) for s in known)) if known else None

    def text(self, s: str) -> str:
        if self._known_re is not None:
            s = self._known_re.sub(MASK, s)
        if "@" in s and ":" in s:
            s = URL_PASSWORD_RE.sub(r"\1:" + MASK + "@", s)
        if "Bearer" in s or "Basic" in s:
            s = _AUTH_RE.sub(r"\1 " + MASK, s)
        return self._keyed(s)

    @staticmethod
    def _keyed(s: str) -> str:
        """Values after secret-named keys. The case-blind patterns are slow on megabytes of log, so they
        run only on the lines where a case-sensitive search of the lowered text finds a keyword."""
        low = s.lower()
        if len(low) != len(s):  # lowering changed lengths (rare scripts): positions would not match
            return _keyed_line(s)
        out: list[str] = []
        done = 0
        for m in _KEYWORD_RE.finditer(low):
            if m.start() < done:
                continue
            begin = s.rfind("\n", 0, m.start()) + 1
            stop = s.find("\n", m.end())
            stop = len(s) if stop < 0 else stop + 1
            out += (s[done:begin], _keyed_line(s[begin:stop]))
            done = stop
        if not out:
            return s
        out.append(s[done:])
        return "".join(out)

    def json(self, obj: Any, key: str = "") -> Any:
        """A copy of a JSON document with secret-key values and secret text masked."""
        if isinstance(obj, dict):
            return {k: self.json(v, str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.json(v, key) for v in obj]
        if obj is not None and not isinstance(obj, bool) and is_secret_key(key):
            return MASK
        if isinstance(obj, str):
            return self.text(obj)
        return obj


def mask_url(url: str) -> str:
    """`url` with any password (user info or ``password=`` query parameter) replaced by ``***``.

    Then masked by pattern like any text in a bundle (`Masker`): a ``user:password@`` is masked
    also where the scheme is mistyped (``postgresql:/u:pw@h``, ``webhook:http://u:pw@h``) or the URL
    cannot be split. Every message that quotes a configured URL shows it through this function."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, sep, _pw = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if sep else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k.lower() == "password" for k, _ in pairs):
                query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
        url = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        pass
    return Masker().text(url)


def url_secrets(url: str) -> list[str]:
    """The password of `url` as written and decoded, to scrub from driver messages (also when `url`
    cannot be split or its scheme is mistyped: then found by the pattern `Masker` masks URLs with)."""
    out: list[str] = [m.group(2) for m in URL_PASSWORD_RE.finditer(url)]
    try:
        parts = urlsplit(url)
        query = parts.query
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            out.append(userinfo.partition(":")[2])
    except ValueError:
        query = url.partition("?")[2].partition("#")[0]
    out.extend(v for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() == "password")
    for s in list(out):
        out.extend({unquote(s), quote(s, safe="")})
    return sorted({s for s in out if s}, key=len, reverse=True)


def one_line(message: object, secrets: Sequence[str] = ()) -> str:
    """A driver's message as one line, without any of `secrets`."""
    text = str(message)
    for s in secrets:
        text = text.replace(s, "***")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return re.sub(r"\s+", " ", lines[0]) if lines else type(message).__name__


def secrets_in(doc: Any, key: str = "") -> list[str]:
    """Every secret-key value and URL password in a JSON-like document (a config dumped as JSON)."""
    found: list[str] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += secrets_in(v, str(k))
    elif isinstance(doc, (list, tuple)):
        for v in doc:
            found += secrets_in(v, key)
    elif isinstance(doc, str):
        if is_secret_key(key):
            found.append(doc)
        if "://" in doc:
            found += url_secrets(doc)
    return found

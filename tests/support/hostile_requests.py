"""A corpus of hostile requests to the ingress (`tests/data/hostile_requests.json`), rendered to
the exact bytes a client puts on the wire.

Each case names what it attacks, the request, and what the ingress must answer: the status, the
refusal reason (`ingress.refusals.Reason`, as counted and logged) and, where one is at fault, the
field the refusal names. A case marked `control` is a valid notification, answered `success` and
published; `xfail_until` names the hole whose fix the case waits for (the test expects it to fail
until then); `settings` overrides `Settings` fields for the ingress that serves the case.

The request's vocabulary (`request`):

- `method` (default `POST`) and `path` (default `/notify`), sent as they are, query included;
- `headers`: header name to value; the client adds `Host`, `Connection: close` and the body's
  length (`Content-Length`, or `Transfer-Encoding: chunked` with `chunked: true`). A form body
  brings its own `Content-Type` unless `headers` names one; `null` leaves a header out;
- `slow`: the body is trickled: `first` bytes at once, then one byte every `every_s` seconds
  (`null`: nothing more), never the whole body before the ingress answers;
- `body`, one of:
  - `{"text": "..."}`: the text's UTF-8;
  - `{"bytes": "..."}`: the text's UTF-8 in which `\\xHH` stands for the byte 0xHH and `\\\\`
    for one backslash (invalid UTF-8, lone 0x80, NUL...); in the JSON file these are written
    `\\\\x80` and `\\\\\\\\`;
  - `{"form": {...}}`: a notification of `tests.conftest`'s merchant `t9awtvk6dn` for the order
    `HR-<case id>` (paid, 1000 li, pay type 10), changed by `set` (replace a field in place or
    add it; `null` drops it) before signing, signed as `key` says, then changed by
    `after_signing` (`set`, and `append`: pairs added even when the name repeats). `key`:
    `current` (the default) or `previous` (both keys of the merchant's rotation window),
    `revoked` (a key the merchant no longer has), `other_merchant`, `empty` (an empty key),
    `omitted` (no `mch_key` pair in the signed string) or `none` (no `sign` field). `sign_as`
    rewrites the right signature: `upper`, `mixed`, `truncated` (31 digits), `extended` (33),
    `doubled` (64), `spaced` (a leading space), `newline` (a trailing LF). `encoding`:
    `urlencoded` (the default; `escape`: `all`, the default, percent-escapes every byte but
    `A-Z a-z 0-9 - . _ ~`; `plus` writes spaces as `+`; `raw` writes names and values as they
    are), `multipart` or `json`; `raw_suffix` is appended to a urlencoded body as it is.
  Values are strings, in which `{order}` is the case's order number and `{key}` the merchant's
  current key, or `{"$raw": "..."}` (JSON text written as is, e.g. a number; its text is what
  is signed), `{"$nest": N}` (N nested JSON arrays), `{"$repeat": ["x", N]}` (text N times).

Signatures are computed here by the document's rule (NOTES.md), written again independently of
`shared.protocol.signing`: MD5 over the non-empty fields but `sign`, plus `mch_key`, sorted by
name, joined as `name=value` with `&`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

from ingress.refusals import STATUS, Reason
from tests.conftest import OTHER_KEY, OTHER_MCH_ID, TEST_KEY, TEST_MCH_ID, TEST_OLD_KEY

if TYPE_CHECKING:
    from collections.abc import Mapping

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "hostile_requests.json"
# The key the test merchant signed with before TEST_OLD_KEY: revoked, in no merchants file.
REVOKED_KEY = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
MERCHANT_KEYS = {TEST_MCH_ID: (TEST_KEY, TEST_OLD_KEY), OTHER_MCH_ID: (OTHER_KEY,)}
SECRETS = (TEST_KEY, TEST_OLD_KEY, OTHER_KEY, REVOKED_KEY)  # must never show in logs or audits
BOUNDARY = "hostileBoundary7MA4YWxkTrZu0gW"
_MEDIA = {
    "urlencoded": "application/x-www-form-urlencoded",
    "multipart": f"multipart/form-data; boundary={BOUNDARY}",
    "json": "application/json",
}
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]{32,}")
_BYTE_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|\\)")
_MIN_SIGN_SHOWN = 16  # shorter sign values are not looked for in logs: they would match anything

Pair = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class Slow:
    first: int  # bytes of the body sent with the headers
    every_s: float | None  # then one more byte this often; None: nothing more


@dataclass(frozen=True, slots=True)
class HostileRequest:
    id: str
    attacks: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    chunked: bool
    slow: Slow | None
    status: int
    reason: str | None  # None only for a control
    field: str | None  # the field the refusal names, when the case says one
    checks_field: bool  # whether the case says which field (null included)
    control: bool
    xfail_until: str | None
    settings: Mapping[str, Any]  # `Settings` fields of the ingress that serves the case
    order_key: str | None  # mch_id:mch_order of a form body
    signs: tuple[str, ...]  # sign values it carries, long enough to look for in logs

    def head(self, host: str) -> bytes:
        """The request line and headers as sent, the blank line included."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
        elif self.body is not None:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def payload(self) -> bytes:
        """The body as sent (chunked framing included)."""
        body = self.body or b""
        if not self.chunked:
            return body
        chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
        return framed + b"0\r\n\r\n"


def load_hostile_requests(path: Path = DATA_FILE) -> list[HostileRequest]:
    """Every case of the corpus, in file order; a case that contradicts itself raises."""
    cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
    requests = [_case(case) for case in cases]
    ids = [request.id for request in requests]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: case ids repeat")
    return requests


def _case(case: Mapping[str, Any]) -> HostileRequest:
    case_id = case["id"]
    spec = case.get("request", {})
    expect = case["expect"]
    control = bool(case.get("control", False))
    status, reason = int(expect["status"]), expect.get("reason")
    if control != (status == 200) or control != (reason is None):
        raise ValueError(f"case {case_id}: a control (only) expects 200 and no reason")
    if reason is not None and STATUS[Reason(reason)] != status:
        raise ValueError(f"case {case_id}: {reason} is answered {STATUS[Reason(reason)]}")
    headers: dict[str, str | None] = {}
    body: bytes | None = None
    order_key: str | None = None
    signs: tuple[str, ...] = ()
    raw_body = spec.get("body")
    if raw_body is not None and "form" in raw_body:
        form = raw_body["form"]
        encoding = form.get("encoding", "urlencoded")
        headers["Content-Type"] = _MEDIA[encoding]
        pairs = _signed_pairs(case_id, form)
        body = _encode(pairs, encoding, form)
        found = dict(pairs)
        order_key = f"{found.get('mch_id', '')}:{found.get('mch_order', '')}"
        sign_values = [str(_text(v)) for n, v in pairs if n == "sign"]
        signs = tuple(s for s in sign_values if len(s) >= _MIN_SIGN_SHOWN)
    elif raw_body is not None:
        body = _literal(raw_body)
        signs = tuple(run.decode("ascii") for run in _HEX_RUN.findall(body))
    headers.update(spec.get("headers", {}))
    slow = spec.get("slow")
    return HostileRequest(
        id=case_id,
        attacks=case["attacks"],
        method=spec.get("method", "POST"),
        path=spec.get("path", "/notify"),
        headers=tuple((n, v) for n, v in headers.items() if v is not None),
        body=body,
        chunked=bool(spec.get("chunked", False)),
        slow=None if slow is None else Slow(int(slow["first"]), slow.get("every_s")),
        status=status,
        reason=reason,
        field=expect.get("field"),
        checks_field="field" in expect,
        control=control,
        xfail_until=case.get("xfail_until"),
        settings=dict(case.get("settings", {})),
        order_key=order_key,
        signs=signs,
    )


def _literal(body: Mapping[str, str]) -> bytes:
    if "text" in body:
        return body["text"].encode("utf-8")
    return _BYTE_ESCAPE.sub(_unescape, body["bytes"].encode("utf-8"))


def _unescape(match: re.Match[bytes]) -> bytes:
    escape = match.group(1)
    return b"\\" if escape == b"\\" else bytes([int(escape[1:], 16)])


def _signed_pairs(case_id: str, form: Mapping[str, Any]) -> list[Pair]:
    order = f"HR-{case_id}"
    pairs: list[Pair] = [
        ("mch_id", TEST_MCH_ID), ("service", "10"), ("mch_order", "{order}"), ("amt", "1000"),
        ("mch_amt", "1000"), ("sign_type", "md5"), ("amt_type", "cny"), ("status", "2"),
        ("created_at", "1700000000"), ("success_at", "1700000100"),
    ]  # fmt: skip
    pairs = _changed(pairs, form.get("set", {}), [])
    mch_id = str(dict(pairs).get("mch_id", TEST_MCH_ID))
    keys = MERCHANT_KEYS.get(mch_id, MERCHANT_KEYS[TEST_MCH_ID])
    pairs = [(name, _fill(value, order, keys[0])) for name, value in pairs]
    how = form.get("key", "current")
    if how != "none":
        secret = {
            "current": keys[0],
            "previous": keys[-1],
            "revoked": REVOKED_KEY,
            "other_merchant": TEST_KEY if mch_id == OTHER_MCH_ID else OTHER_KEY,
            "empty": "",
            "omitted": None,
        }[how]
        if how == "previous" and len(keys) < 2:
            raise ValueError(f"case {case_id}: merchant {mch_id} has no previous key")
        pairs.append(("sign", _sign_as(oracle_sign(pairs, secret), form.get("sign_as"))))
    after = form.get("after_signing", {})
    fill = [(n, _fill(v, order, keys[0])) for n, v in after.get("append", [])]
    changed = _changed(pairs, after.get("set", {}), fill)
    return [(name, _fill(value, order, keys[0])) for name, value in changed]


def _changed(pairs: list[Pair], updates: Mapping[str, Any], appended: list[Pair]) -> list[Pair]:
    changed = list(pairs)
    for name, value in updates.items():
        names = [n for n, _ in changed]
        if value is None:
            changed = [(n, v) for n, v in changed if n != name]
        elif name in names:
            changed[names.index(name)] = (name, value)
        else:
            changed.append((name, value))
    return changed + appended


def _fill(value: Any, order: str, key: str) -> Any:
    if isinstance(value, str):
        return value.replace("{order}", order).replace("{key}", key)
    if isinstance(value, dict) and "$repeat" in value:
        text, times = value["$repeat"]
        return str(text) * int(times)
    return value


def _text(value: Any) -> str:
    """A value's text as the ingress reads it (a JSON number: its digits as sent)."""
    if isinstance(value, dict) and "$raw" in value:
        return str(value["$raw"])
    if isinstance(value, dict) and "$nest" in value:
        return "[" * int(value["$nest"]) + "]" * int(value["$nest"])
    if not isinstance(value, str):
        raise TypeError(f"form values are strings or $raw/$nest/$repeat, not {value!r}")
    return value


def oracle_sign(pairs: list[Pair], secret: str | None) -> str:
    """The document's signature over `pairs` (names unique), `secret` as `mch_key` (None: left
    out of the signed string)."""
    covered = {name: _text(value) for name, value in pairs if name != "sign"}
    covered = {name: text for name, text in covered.items() if text != ""}
    if secret is not None:
        covered["mch_key"] = secret
    signed = "&".join(f"{name}={covered[name]}" for name in sorted(covered))
    return hashlib.md5(signed.encode("utf-8")).hexdigest()  # noqa: S324 - the platform's scheme


def _sign_as(sign: str, how: str | None) -> str:
    if how is None:
        return sign
    return {
        "upper": sign.upper(),
        "mixed": "".join(c.upper() if i % 2 else c for i, c in enumerate(sign)),
        "truncated": sign[:-1],
        "extended": sign + "0",
        "doubled": sign + sign,
        "spaced": " " + sign,
        "newline": sign + "\n",
    }[how]


def _encode(pairs: list[Pair], encoding: str, form: Mapping[str, Any]) -> bytes:
    if encoding == "json":
        members = ",".join(
            json.dumps(name, ensure_ascii=False)
            + ":"
            + (_text(value) if isinstance(value, dict) else json.dumps(value, ensure_ascii=False))
            for name, value in pairs
        )
        return ("{" + members + "}").encode("utf-8")
    if encoding == "multipart":
        parts = [
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{_text(value)}\r\n"
            for name, value in pairs
        ]
        return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode("utf-8")
    escape = form.get("escape", "all")
    if escape == "raw":
        text = "&".join(f"{name}={_text(value)}" for name, value in pairs)
    else:
        quoted = quote_plus if escape == "plus" else quote
        text = "&".join(
            f"{quoted(name, safe='')}={quoted(_text(value), safe='')}" for name, value in pairs
        )
    return (text + str(form.get("raw_suffix", ""))).encode("utf-8")

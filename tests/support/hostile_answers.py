"""A corpus of hostile platform answers (`tests/data/hostile_answers.json`) and a local platform
that serves them, for any test that puts the real client in front of a hostile platform.

Each case says how to build its HTTP answer for the order being asked about, which
`PlatformError` subclass the client must raise for it, and (`says`) a fragment of that error's
message, so that a case passes only for its own reason. The data file's vocabulary:

- `report`: the paid report of the order asked about, as the sandbox answers it (`code` 1, `msg`,
  then the notification's fields), changed by `set` (replace a member in place, or add it),
  `drop` and `append` (add a member, even a repeated one); then signed as `sign` says
  (`merchant`, the default: the merchant's key; `other_merchant`: another merchant's key;
  `merchant_with_envelope`: the merchant's key over `code` and `msg` too; `none`: no sign
  member); then changed again by `after_signing` (`set` and `append`). `code` and `msg` replace
  the envelope's values.
- `members`: an object written as given, unsigned. `text` and `hex`: the body as it is.
- A member value `{"$raw": "..."}` is JSON text written as is (a number a float cannot hold,
  NaN), `{"$nest": N}` is N nested empty arrays; any other value is written as JSON, with
  `{mch_id}` and `{mch_order}` in strings replaced by the order asked about.
- `pad_to` pads the body with whitespace before its last byte, to a length or to `over_limit`
  (one byte over the client's answer limit); `content_encoding: gzip` compresses the padded
  body; `chunked` sends it without a Content-Length. `status` (default 200) and `headers` are
  the HTTP answer's.

Signatures are computed here at load time, over the text the platform's PHP concatenates for
each value (strings as themselves, numbers as written, true "1", false and null empty), with
`tests.conftest`'s keys unless a caller passes its own.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web

from shared.platform.client import MAX_ANSWER_BYTES
from shared.protocol import errors
from shared.protocol.models import ENVELOPE_FIELDS
from shared.protocol.signing import SIGN_FIELD, sign
from tests.conftest import OTHER_KEY, TEST_KEY, TEST_MCH_ID

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "hostile_answers.json"
HOSTILE_ORDER = "HOSTILE-0001"  # the order a test asks about when it has none of its own

Member = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class HostileAnswer:
    """One hostile HTTP answer and the error the client must raise for it."""

    name: str
    why: str
    status: int
    headers: tuple[tuple[str, str], ...]
    expected_error: type[errors.PlatformError]
    says: str  # a fragment of the error's message: the case fails for its own reason
    chunked: bool
    build_body: Callable[[str, str, str], bytes] = field(repr=False, compare=False)

    def body(
        self, mch_id: str = TEST_MCH_ID, mch_order: str = HOSTILE_ORDER, key: str = TEST_KEY
    ) -> bytes:
        """The body for a query about `mch_id`/`mch_order`, signed (where it is) with `key`."""
        return self.build_body(mch_id, mch_order, key)


def load_hostile_answers(path: Path = DATA_FILE) -> list[HostileAnswer]:
    """Every case of the corpus, in file order."""
    cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
    answers = [_case(case) for case in cases]
    names = [answer.name for answer in answers]
    if len(names) != len(set(names)):
        raise ValueError(f"{path}: case names repeat")
    return answers


def _case(case: Mapping[str, Any]) -> HostileAnswer:
    expected = getattr(errors, case["expect"])
    if not (isinstance(expected, type) and issubclass(expected, errors.PlatformError)):
        raise TypeError(f"case {case['name']}: {case['expect']} is not a PlatformError")
    headers = dict(case.get("headers", {}))
    if case.get("content_encoding") == "gzip":
        headers["Content-Encoding"] = "gzip"
    if "text" not in case and "hex" not in case:
        headers.setdefault("Content-Type", "application/json")

    def build(mch_id: str, mch_order: str, key: str) -> bytes:
        body = _content(case, mch_id, mch_order, key)
        pad_to = case.get("pad_to")
        if pad_to is not None:
            length = MAX_ANSWER_BYTES + 1 if pad_to == "over_limit" else int(pad_to)
            body = body[:-1] + b" " * max(0, length - len(body)) + body[-1:]
        if case.get("content_encoding") == "gzip":
            body = gzip.compress(body, compresslevel=9, mtime=0)
        return body

    return HostileAnswer(
        name=case["name"],
        why=case["why"],
        status=int(case.get("status", 200)),
        headers=tuple(headers.items()),
        expected_error=expected,
        says=str(case.get("says", "")),
        chunked=bool(case.get("chunked", False)),
        build_body=build,
    )


def _content(case: Mapping[str, Any], mch_id: str, mch_order: str, key: str) -> bytes:
    if "hex" in case:
        return bytes.fromhex(case["hex"])
    if "text" in case:
        return str(case["text"]).encode()
    if "members" in case:
        members = [(name, _fill(value, mch_id, mch_order)) for name, value in case["members"]]
        return _encode(members)
    return _report(case["report"], mch_id, mch_order, key)


def _report(spec: Mapping[str, Any], mch_id: str, mch_order: str, key: str) -> bytes:
    """The sandbox's paid report for the order, changed, signed and changed again."""
    members: list[Member] = [
        ("code", spec.get("code", 1)), ("msg", spec.get("msg", "success")),
        ("sign_type", "md5"), ("mch_id", mch_id), ("service", 10), ("mch_order", mch_order),
        ("amt", 12_340), ("mch_amt", 12_340), ("amt_type", "cny"), ("status", 2),
        ("created_at", 1_700_000_100), ("success_at", 1_700_000_050), ("origin_order", ""),
    ]  # fmt: skip

    def fill(value: Any) -> Any:
        return _fill(value, mch_id, mch_order)

    members = _changed(members, spec, fill)
    how = spec.get("sign", "merchant")
    if how != "none":
        secret = {"merchant": key, "merchant_with_envelope": key, "other_merchant": OTHER_KEY}
        skip = {SIGN_FIELD} if how == "merchant_with_envelope" else {SIGN_FIELD, *ENVELOPE_FIELDS}
        covered: dict[str, str] = {}
        for name, value in members:
            if name not in skip:
                covered.setdefault(name, _signed_text(value))
        members.append((SIGN_FIELD, sign(covered, secret[how])))
    members = _changed(members, spec.get("after_signing", {}), fill)
    return _encode(members)


def _changed(
    members: list[Member], spec: Mapping[str, Any], fill: Callable[[Any], Any]
) -> list[Member]:
    changed = [(name, value) for name, value in members if name not in spec.get("drop", ())]
    for name, value in spec.get("set", {}).items():
        names = [n for n, _ in changed]
        if name in names:
            changed[names.index(name)] = (name, fill(value))
        else:
            changed.append((name, fill(value)))
    changed += [(name, fill(value)) for name, value in spec.get("append", ())]
    return changed


def _fill(value: Any, mch_id: str, mch_order: str) -> Any:
    if isinstance(value, str):
        return value.replace("{mch_id}", mch_id).replace("{mch_order}", mch_order)
    if isinstance(value, float):
        raise TypeError("write non-integer numbers as {'$raw': '...'}, so their text is exact")
    return value


def _json(value: Any) -> str:
    if isinstance(value, dict) and "$raw" in value:
        return str(value["$raw"])
    if isinstance(value, dict) and "$nest" in value:
        return "[" * int(value["$nest"]) + "]" * int(value["$nest"])
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _signed_text(value: Any) -> str:
    """What the platform's PHP concatenates for a value when signing."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return "1" if value else ""
    return _json(value)


def _encode(members: list[Member]) -> bytes:
    """A JSON object with members in order, names free to repeat (a dict could not)."""
    text = ",".join(
        f"{json.dumps(name, ensure_ascii=False)}:{_json(value)}" for name, value in members
    )
    return ("{" + text + "}").encode()


class HostilePlatform:
    """A platform on 127.0.0.1 (free port) that answers every POST with `answer`, built for the
    order the request asks about and signed with `key`; it records every form it receives."""

    def __init__(self, answer: HostileAnswer | None = None, *, key: str = TEST_KEY) -> None:
        self.answer = answer
        self.key = key
        self.requests: list[dict[str, str]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.requests.append(form)
        answer = self.answer
        if answer is None:
            raise web.HTTPServiceUnavailable(text="no answer set")
        body = answer.body(
            form.get("mch_id", TEST_MCH_ID), form.get("mch_order", HOSTILE_ORDER), self.key
        )
        if not answer.chunked:
            return web.Response(status=answer.status, headers=dict(answer.headers), body=body)
        response = web.StreamResponse(status=answer.status, headers=dict(answer.headers))
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 64 * 1024):
            await response.write(body[start : start + 64 * 1024])
        await response.write_eof()
        return response

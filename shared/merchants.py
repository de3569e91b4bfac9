"""The merchants file (`PAYNOTIFY_MERCHANTS_FILE`): one TOML table per merchant id.

[merchants.t9awtvk6dn]
keys = ["current-key", "previous-key"]   # the current key first; all verify, the first signs
allow_from = ["203.0.113.0/24"]           # optional: source networks allowed to notify
"""

from __future__ import annotations

import hashlib
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from shared.protocol.fields import check_text, has_control_characters
from shared.protocol.signing import MerchantKey

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class MerchantsFileError(ValueError):
    """The merchants file is unreadable or breaks a rule; the message never holds a key."""


@dataclass(frozen=True, slots=True)
class Merchant:
    mch_id: str
    keys: tuple[MerchantKey, ...]  # the current key first
    allow_from: tuple[IPNetwork, ...] = ()  # empty: any source

    @property
    def signing_key(self) -> MerchantKey:
        return self.keys[0]

    def allows(self, address: str | None) -> bool:
        if not self.allow_from:
            return True
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.allow_from)


def parse_merchants(document: Mapping[str, Any]) -> Mapping[str, Merchant]:
    table = document.get("merchants")
    if not isinstance(table, dict) or not table:
        raise MerchantsFileError("the merchants file needs at least one [merchants.<mch_id>] table")
    merchants: dict[str, Merchant] = {}
    for mch_id, entry in table.items():
        try:
            check_text("mch_id", mch_id, max_length=32)
        except ValueError as exc:
            raise MerchantsFileError(f"merchant id {mch_id!r} is invalid: {exc}") from None
        if ":" in mch_id:  # `mch_id:mch_order` must name one order of one merchant
            raise MerchantsFileError(f"merchant id {mch_id!r} is invalid: ':' is not allowed")
        if not isinstance(entry, dict):
            raise MerchantsFileError(f"[merchants.{mch_id}] must be a table")
        keys = entry.get("keys")
        if (
            not isinstance(keys, list)
            or not keys
            or not all(isinstance(k, str) and k for k in keys)
        ):
            raise MerchantsFileError(
                f"[merchants.{mch_id}] keys must be a non-empty list of strings"
            )
        _check_keys(mch_id, keys)
        allow = entry.get("allow_from", [])
        if not isinstance(allow, list):
            raise MerchantsFileError(f"[merchants.{mch_id}] allow_from must be a list of networks")
        try:
            networks = tuple(ipaddress.ip_network(str(net), strict=False) for net in allow)
        except ValueError as exc:
            raise MerchantsFileError(f"[merchants.{mch_id}] allow_from: {exc}") from None
        merchants[mch_id] = Merchant(
            mch_id=mch_id,
            keys=tuple(MerchantKey.from_secret(k) for k in keys),
            allow_from=networks,
        )
    return MappingProxyType(merchants)


def _check_keys(mch_id: str, keys: list[str]) -> None:
    for position, key in enumerate(keys, start=1):
        # Named by position only: an error must never show a key.
        if not key.strip() or key != key.strip() or has_control_characters(key):
            raise MerchantsFileError(
                f"[merchants.{mch_id}] key {position} is blank, has white space around it "
                "or holds control characters"
            )


def load_merchants(path: Path) -> Mapping[str, Merchant]:
    return _parse_file(path, _read(path))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MerchantsFileError(f"cannot read merchants file {path}: {exc.strerror}") from None


def _parse_file(path: Path, raw: bytes) -> Mapping[str, Merchant]:
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise MerchantsFileError(f"merchants file {path} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise MerchantsFileError(f"merchants file {path} is not valid TOML: {exc}") from None
    return parse_merchants(document)


class LiveMerchants(Mapping[str, Merchant]):
    """The merchants file as it is now: a mapping the verifier, the platform client and the
    reconciler read at each use, whose content `reload` replaces at once (a key rotation
    without a restart). A file that does not load leaves the merchants as they were."""

    __slots__ = ("_digest", "_merchants", "path", "reload_failures", "reloads")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reloads = 0  # new content taken
        self.reload_failures = 0  # content that did not load (the old merchants kept)
        raw = _read(path)
        self._merchants = _parse_file(path, raw)
        self._digest = hashlib.sha256(raw).digest()

    def reload(self) -> bool:
        """Read the file again: True when its content changed and now serves, False when it is
        unchanged; raises `MerchantsFileError` (the merchants unchanged) when it does not load."""
        raw = _read(self.path)
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return False
        merchants = _parse_file(self.path, raw)
        self._merchants, self._digest = merchants, digest
        return True

    @property
    def keys_count(self) -> int:
        """How many keys in all (to log a rotation without logging a key)."""
        return sum(len(m.keys) for m in self._merchants.values())

    def __getitem__(self, mch_id: str) -> Merchant:
        return self._merchants[mch_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._merchants)

    def __len__(self) -> int:
        return len(self._merchants)

    def __contains__(self, mch_id: object) -> bool:
        return mch_id in self._merchants

"""`paynotify sign` and `paynotify verify`: the signature rules on the command line.

Pairs are read raw, exactly as the platform signs them: `k=v` split at the first `=`, no URL
decoding, so `notify_url=https://x/n.php?a=b` is one pair. Output never shows the key.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from shared.protocol.signing import MerchantKey, SignatureError, sign, verify

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2


class PairError(ValueError):
    """A command-line pair that is not `k=v`, or repeats a name."""


def parse_pairs(pairs: Sequence[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for position, pair in enumerate(pairs, start=1):
        name, sep, value = pair.partition("=")
        if not sep or not name:
            # The argument itself is not echoed: it may be a key pasted in the wrong place.
            raise PairError(f"argument {position} is not a k=v pair")
        if name in fields:
            raise PairError(f"field {name!r} is given twice")
        fields[name] = value
    return fields


def _fail(code: int, message: str) -> int:
    sys.stderr.write(message + "\n")
    return code


def sign_main(args: argparse.Namespace) -> int:
    """Print the form's signature (32 lower-case hex digits)."""
    try:
        fields = parse_pairs(args.pairs)
        key = MerchantKey.from_secret(args.key)
        signature = sign(fields, key)
    except (PairError, SignatureError, ValueError) as exc:
        return _fail(EXIT_USAGE, f"error: {exc}")
    sys.stdout.write(signature + "\n")
    return EXIT_OK


def verify_main(args: argparse.Namespace) -> int:
    """Exit 0 when the form's `sign` matches the key; 1 with a one-line reason when not."""
    try:
        fields = parse_pairs(args.pairs)
        key = MerchantKey.from_secret(args.key)
    except (PairError, ValueError) as exc:
        return _fail(EXIT_USAGE, f"error: {exc}")
    try:
        verify(fields, [key])
    except SignatureError as exc:
        return _fail(EXIT_MISMATCH, f"mismatch: {exc.reason}: {exc}")
    sys.stdout.write(f"ok: signature matches key {key.key_id}\n")
    return EXIT_OK

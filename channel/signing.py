"""ECDSA over secp256k1 for channel transactions, on the hot path.

Theory of operation. A commitment_signed with N HTLCs costs N + 1 signatures and
the receiver N + 1 verifications; that signature work is the floor of the hub's
throughput (DESIGN.md "Performance"), so everything around it must be small:

- Signing calls libsecp256k1 (through coincurve's cffi binding) directly with the
  32-byte secret: no ``PrivateKey`` object is built, because building one derives
  two public keys (~30 us) that signing never needs. Nonces are RFC6979 (the
  library default), so signatures are deterministic and match the BOLT #3 vectors
  byte for byte; libsecp256k1 always produces low-S.
- Public keys are parsed once and kept in an LRU cache keyed by their 33 bytes;
  a channel verifies against the same few keys over and over.
- Secret-side derivations (``scalar_add``, ``scalar_mul_add``) run in libsecp256k1's
  constant-time scalar code, never in Python integers.
- The BOLT #3 key derivations (keys.py) run on parsed ``secp256k1_pubkey``
  structs through the same binding: ``tweak_add_pubkey`` sums ``t*G`` from a
  fixed-base table of G in one ``ec_pubkey_combine`` (see ``_g_table``), cheaper
  than ``ec_pubkey_tweak_add``'s general multiplication; ``mul_add_pubkeys`` is two
  variable-base multiplications (``ec_pubkey_tweak_mul``) and one addition, with
  no serialize/parse round trip between them.
- Signatures cross the channel/ API as 64-byte compact ``r || s`` (what BOLT #2
  messages carry). ``der_signature`` turns one into the DER form that goes into a
  witness (followed by the sighash-type byte).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

SIGHASH_ALL = 1

_CTX = GLOBAL_CONTEXT.ctx
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def is_compressed_pubkey_encoding(pubkey: bytes) -> bool:
    """33 bytes with a 0x02/0x03 prefix: the only encoding BOLT #3 keys have."""
    return len(pubkey) == 33 and pubkey[0] in (2, 3)


def parse_pubkey(pubkey: bytes) -> Any:
    """A fresh libsecp256k1 ``secp256k1_pubkey*`` for a 33-byte compressed key
    (ValueError for any other encoding, even of a valid point: BOLT #3 hashes the
    compressed bytes, so an uncompressed or hybrid key would derive other keys)."""
    key = ffi.new("secp256k1_pubkey *")
    if not is_compressed_pubkey_encoding(pubkey) or not lib.secp256k1_ec_pubkey_parse(
        _CTX, key, pubkey, 33
    ):
        raise ValueError("invalid public key")
    return key


@lru_cache(maxsize=8192)
def parsed_pubkey(pubkey: bytes) -> Any:
    """The libsecp256k1 ``secp256k1_pubkey*`` for a key, parsed once (do not mutate)."""
    return parse_pubkey(pubkey)


def _serialize(key: Any) -> bytes:
    out = ffi.new("unsigned char[33]")
    size = ffi.new("size_t *", 33)
    lib.secp256k1_ec_pubkey_serialize(_CTX, out, size, key, lib.SECP256K1_EC_COMPRESSED)
    return bytes(ffi.buffer(out, 33))


# Fixed-base table of G for public tweaks: entry 256*i + d is d * 256**(31 - i) * G
# (d = 1..255), so t*G is the sum of one entry per non-zero byte of t, and
# ``base + t*G`` is one ``ec_pubkey_combine`` of at most 33 points (~10 us here,
# against ~15 us for ``ec_pubkey_create`` + combine and ~19 us for
# ``ec_pubkey_tweak_add``). Variable-time, so for public scalars only (the BOLT #3
# tweaks are hashes of public points); never for secrets. Built on first use
# (8160 point additions, ~17 ms, 512 KiB). The build is under a lock: the entries
# are pointers into one cffi allocation, and two threads building at once would
# leave the loser's table pointing into storage that is freed.
_G_TABLE: list[Any] | None = None
_G_TABLE_STORAGE: Any = None
_G_TABLE_LOCK = threading.Lock()


def _g_table() -> list[Any]:
    if _G_TABLE is not None:
        return _G_TABLE
    with _G_TABLE_LOCK:
        if _G_TABLE is None:
            _build_g_table()
    assert _G_TABLE is not None
    return _G_TABLE


def _build_g_table() -> None:
    global _G_TABLE, _G_TABLE_STORAGE
    storage = ffi.new("secp256k1_pubkey[8192]")
    table: list[Any] = [None] * 8192
    unit = ffi.new("secp256k1_pubkey *")
    lib.secp256k1_ec_pubkey_create(_CTX, unit, (1).to_bytes(32, "big"))
    for i in range(31, -1, -1):  # unit = 256**(31 - i) * G
        row = 256 * i
        table[row + 1] = storage + (row + 1)
        ffi.memmove(table[row + 1], unit, 64)
        for d in range(2, 256):
            table[row + d] = storage + (row + d)
            lib.secp256k1_ec_pubkey_combine(
                _CTX, table[row + d], [table[row + d - 1], table[row + 1]], 2
            )
        if i:
            lib.secp256k1_ec_pubkey_combine(_CTX, unit, [table[row + 255], table[row + 1]], 2)
    _G_TABLE_STORAGE = storage  # the entries point into it: keep it alive
    _G_TABLE = table


def tweak_add_pubkey(pubkey: bytes, tweak: bytes) -> bytes:
    """Compressed ``pubkey + tweak*G`` for a PUBLIC 32-byte tweak (variable time);
    ValueError if the tweak is not a valid non-zero scalar or the sum is the point
    at infinity (as ``ec_pubkey_tweak_add``)."""
    if len(tweak) != 32 or not 0 < int.from_bytes(tweak, "big") < _N:
        raise ValueError("tweak out of range")
    table = _g_table()
    points = [parsed_pubkey(pubkey)]
    points += [table[row + d] for row, d in zip(range(0, 8192, 256), tweak, strict=True) if d]
    out = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_combine(_CTX, out, points, len(points)):
        raise ValueError("tweaked key is the point at infinity")
    return _serialize(out)


def mul_add_pubkeys(a: Any, x: bytes, b: Any, y: bytes) -> bytes:
    """Compressed ``a*x + b*y`` for parsed points ``a``, ``b`` (left unchanged) and
    32-byte scalars ``x``, ``y``; ValueError on an invalid scalar or infinity."""
    ax = ffi.new("secp256k1_pubkey *", a[0])
    by = ffi.new("secp256k1_pubkey *", b[0])
    if not (
        lib.secp256k1_ec_pubkey_tweak_mul(_CTX, ax, x)
        and lib.secp256k1_ec_pubkey_tweak_mul(_CTX, by, y)
    ):
        raise ValueError("tweak out of range")
    out = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_combine(_CTX, out, [ax, by], 2):
        raise ValueError("sum is the point at infinity")
    return _serialize(out)


def sign(secret: bytes, sighash: bytes) -> bytes:
    """Compact 64-byte ECDSA signature (RFC6979 nonce, low-S) of a 32-byte digest."""
    if len(secret) != 32 or len(sighash) != 32:
        # libsecp256k1 reads exactly 32 bytes of each: a short one would be read past
        # its end, a long one silently cut.
        raise ValueError("a secret and a digest are 32 bytes")
    sig = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_sign(_CTX, sig, sighash, secret, ffi.NULL, ffi.NULL):
        raise ValueError("invalid private key")
    out = ffi.new("unsigned char[64]")
    lib.secp256k1_ecdsa_signature_serialize_compact(_CTX, out, sig)
    return bytes(ffi.buffer(out, 64))


def verify(pubkey: bytes, sighash: bytes, signature: bytes) -> bool:
    """True if the compact ``signature`` over ``sighash`` verifies for ``pubkey``.

    A high-S signature does not verify (libsecp256k1 and BIP146 LOW_S policy).
    Malformed keys or signatures verify as False rather than raise.
    """
    if len(signature) != 64 or len(sighash) != 32:
        return False
    sig = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_signature_parse_compact(_CTX, sig, signature):
        return False
    try:
        key = parsed_pubkey(pubkey)
    except ValueError:
        return False
    return bool(lib.secp256k1_ecdsa_verify(_CTX, sig, sighash, key))


def _der_int(b: bytes) -> bytes:
    b = b.lstrip(b"\x00") or b"\x00"
    if b[0] & 0x80:
        b = b"\x00" + b
    return b"\x02" + bytes((len(b),)) + b


def der_signature(signature: bytes) -> bytes:
    """Strict DER (BIP66) encoding of a compact signature, without sighash byte."""
    body = _der_int(signature[:32]) + _der_int(signature[32:])
    return b"\x30" + bytes((len(body),)) + body


def witness_signature(signature: bytes, sighash_type: int = SIGHASH_ALL) -> bytes:
    """DER signature plus the sighash-type byte, as it goes into a witness."""
    return der_signature(signature) + bytes((sighash_type,))


def compact_signature(der: bytes) -> bytes:
    """Compact 64-byte form of a strict-DER (BIP66) signature, without sighash byte.

    Refuses what Bitcoin Core's IsValidSignatureEncoding refuses: wrong lengths,
    trailing data, empty, negative or non-minimally encoded integers, and
    integers longer than 32 bytes (ValueError). The S value is not judged here:
    ``verify`` refuses a high-S signature.
    """
    size = len(der)
    if not 8 <= size <= 72 or der[0] != 0x30 or der[1] != size - 2 or der[2] != 0x02:
        raise ValueError("not a strict DER signature")
    len_r = der[3]
    if 5 + len_r >= size or der[4 + len_r] != 0x02:
        raise ValueError("not a strict DER signature")
    len_s = der[5 + len_r]
    if len_r + len_s + 6 != size:
        raise ValueError("not a strict DER signature")
    parts = []
    for value in (der[4 : 4 + len_r], der[6 + len_r :]):
        if (
            not value
            or value[0] & 0x80  # negative
            or (len(value) > 1 and value[0] == 0 and not value[1] & 0x80)  # not minimal
            or len(value) > 33
            or (len(value) == 33 and value[0] != 0)
        ):
            raise ValueError("not a strict DER signature")
        parts.append(value[-32:].rjust(32, b"\x00"))
    return parts[0] + parts[1]


def _secret_buffer(secret: bytes) -> Any:
    if len(secret) != 32:
        raise ValueError("a secret is 32 bytes")
    buf = ffi.new("unsigned char[32]")
    ffi.memmove(buf, secret, 32)
    return buf


def scalar_add(a: bytes, b: bytes) -> bytes:
    """(a + b) mod n as 32 bytes: private-key tweaking for BOLT #3 derivation.

    ``a`` is a secret: the sum runs in libsecp256k1's constant-time scalar code
    (``ec_seckey_tweak_add``), not in Python's variable-time integers. ValueError
    if ``a`` is not a valid secret, ``b`` is not below n, or the sum is zero.
    """
    out = _secret_buffer(a)
    if len(b) != 32 or not lib.secp256k1_ec_seckey_tweak_add(_CTX, out, b):
        raise ValueError("invalid secret, tweak out of range or zero sum")
    return bytes(ffi.buffer(out, 32))


def scalar_mul_add(a: bytes, x: bytes, b: bytes, y: bytes) -> bytes:
    """(a*x + b*y) mod n as 32 bytes (revocation private key), for secrets ``a``,
    ``b`` and public factors ``x``, ``y``; constant time (libsecp256k1's
    ``ec_seckey_tweak_mul``/``tweak_add``). ValueError on an invalid secret, a
    factor that is zero or not below n, or a zero result."""
    ax = _secret_buffer(a)
    by = _secret_buffer(b)
    if not (
        len(x) == 32
        and len(y) == 32
        and lib.secp256k1_ec_seckey_tweak_mul(_CTX, ax, x)
        and lib.secp256k1_ec_seckey_tweak_mul(_CTX, by, y)
        and lib.secp256k1_ec_seckey_tweak_add(_CTX, ax, bytes(ffi.buffer(by, 32)))
    ):
        raise ValueError("invalid secret or factor, or zero result")
    return bytes(ffi.buffer(ax, 32))

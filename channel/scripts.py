"""Output scripts of a channel (BOLT #3 "Funding Transaction Output", "Commitment
Transaction Outputs", "HTLC-timeout and HTLC-success Transactions").

Theory of operation. Every channel output is P2WSH (funding, to_local, HTLCs, and
the second-stage HTLC outputs) except to_remote, which is P2WPKH to the other
party's payment_basepoint (option_static_remotekey). The witness scripts are
built by concatenating pushes; the only numbers in them (to_self_delay,
cltv_expiry) are minimally encoded CScriptNums, as Bitcoin Core's MINIMALDATA
policy demands.

HTLC scripts of one commitment share everything but the payment hash (and the
received script's cltv_expiry), so ``HtlcScripts`` assembles the shared parts
once per commitment and each HTLC costs one RIPEMD160 and a concatenation.
"""

from __future__ import annotations

import hashlib

OP_0 = 0x00
OP_1 = 0x51
OP_2 = 0x52
OP_IF = 0x63
OP_NOTIF = 0x64
OP_ELSE = 0x67
OP_ENDIF = 0x68
OP_DROP = 0x75
OP_DUP = 0x76
OP_SWAP = 0x7C
OP_SIZE = 0x82
OP_EQUAL = 0x87
OP_EQUALVERIFY = 0x88
OP_HASH160 = 0xA9
OP_CHECKSIG = 0xAC
OP_CHECKMULTISIG = 0xAE
OP_CHECKLOCKTIMEVERIFY = 0xB1
OP_CHECKSEQUENCEVERIFY = 0xB2


def _ripemd160_hashlib(data: bytes) -> bytes:
    return hashlib.new("ripemd160", data).digest()


try:
    _ripemd160_hashlib(b"")
    ripemd160 = _ripemd160_hashlib
except ValueError:  # pragma: no cover - OpenSSL 3 builds without the legacy provider
    from btclib.hashes import ripemd160 as _btclib_ripemd160

    def ripemd160(data: bytes) -> bytes:
        return bytes(_btclib_ripemd160(data))


def hash160(data: bytes) -> bytes:
    return ripemd160(hashlib.sha256(data).digest())


def push(data: bytes) -> bytes:
    """Push of up to 75 bytes (all keys and hashes in channel scripts)."""
    if len(data) > 75:
        raise ValueError("push too long for a direct push")
    return bytes((len(data),)) + data


def push_int(n: int) -> bytes:
    """Minimal push of a non-negative script number (BIP62 MINIMALDATA)."""
    if n < 0:
        raise ValueError("negative script number")
    if n == 0:
        return bytes((OP_0,))
    if n <= 16:
        return bytes((OP_1 + n - 1,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "little")
    if body[-1] & 0x80:
        body += b"\x00"
    return push(body)


def p2wsh(witness_script: bytes) -> bytes:
    return b"\x00\x20" + hashlib.sha256(witness_script).digest()


def p2wpkh(pubkey: bytes) -> bytes:
    return b"\x00\x14" + hash160(pubkey)


def p2wpkh_script_code(pubkey: bytes) -> bytes:
    """BIP143 scriptCode for spending a P2WPKH output of ``pubkey``."""
    return b"\x76\xa9\x14" + hash160(pubkey) + b"\x88\xac"


def funding_script(pubkey_a: bytes, pubkey_b: bytes) -> bytes:
    """2-of-2 multisig, keys in lexicographic order of their compressed encoding."""
    k1, k2 = sorted((pubkey_a, pubkey_b))
    return bytes((OP_2,)) + push(k1) + push(k2) + bytes((OP_2, OP_CHECKMULTISIG))


def to_local_script(
    revocation_pubkey: bytes, to_self_delay: int, local_delayed_pubkey: bytes
) -> bytes:
    """OP_IF <revocationpubkey> OP_ELSE <to_self_delay> OP_CSV OP_DROP
    <local_delayedpubkey> OP_ENDIF OP_CHECKSIG (also the HTLC-tx output script)."""
    return (
        bytes((OP_IF,))
        + push(revocation_pubkey)
        + bytes((OP_ELSE,))
        + push_int(to_self_delay)
        + bytes((OP_CHECKSEQUENCEVERIFY, OP_DROP))
        + push(local_delayed_pubkey)
        + bytes((OP_ENDIF, OP_CHECKSIG))
    )


class HtlcScripts:
    """Offered/received HTLC witness scripts for one commitment's keys."""

    __slots__ = ("_offered_prefix", "_received_mid", "_received_prefix")

    # The constant tails, named after the BOLT #3 script text they encode.
    _OFFERED_SUFFIX = bytes((OP_EQUALVERIFY, OP_CHECKSIG, OP_ENDIF, OP_ENDIF))
    _RECEIVED_SUFFIX = bytes((OP_CHECKLOCKTIMEVERIFY, OP_DROP, OP_CHECKSIG, OP_ENDIF, OP_ENDIF))

    def __init__(
        self, revocation_pubkey: bytes, local_htlc_pubkey: bytes, remote_htlc_pubkey: bytes
    ) -> None:
        # OP_DUP OP_HASH160 <RIPEMD160(SHA256(revocationpubkey))> OP_EQUAL
        # OP_IF OP_CHECKSIG OP_ELSE <remote_htlcpubkey> OP_SWAP OP_SIZE 32 OP_EQUAL
        head = (
            bytes((OP_DUP, OP_HASH160))
            + push(hash160(revocation_pubkey))
            + bytes((OP_EQUAL, OP_IF, OP_CHECKSIG, OP_ELSE))
            + push(remote_htlc_pubkey)
            + bytes((OP_SWAP, OP_SIZE))
            + push(b"\x20")
            + bytes((OP_EQUAL,))
        )
        # Offered: OP_NOTIF OP_DROP 2 OP_SWAP <local_htlcpubkey> 2 OP_CHECKMULTISIG
        #          OP_ELSE OP_HASH160 <RIPEMD160(payment_hash)> ...
        self._offered_prefix = (
            head
            + bytes((OP_NOTIF, OP_DROP, OP_2, OP_SWAP))
            + push(local_htlc_pubkey)
            + bytes((OP_2, OP_CHECKMULTISIG, OP_ELSE, OP_HASH160, 20))
        )
        # Received: OP_IF OP_HASH160 <RIPEMD160(payment_hash)> OP_EQUALVERIFY
        #           2 OP_SWAP <local_htlcpubkey> 2 OP_CHECKMULTISIG
        #           OP_ELSE OP_DROP <cltv_expiry> OP_CLTV OP_DROP OP_CHECKSIG ...
        self._received_prefix = head + bytes((OP_IF, OP_HASH160, 20))
        self._received_mid = (
            bytes((OP_EQUALVERIFY, OP_2, OP_SWAP))
            + push(local_htlc_pubkey)
            + bytes((OP_2, OP_CHECKMULTISIG, OP_ELSE, OP_DROP))
        )

    def offered(self, payment_hash: bytes) -> bytes:
        return self._offered_prefix + ripemd160(payment_hash) + self._OFFERED_SUFFIX

    def received(self, payment_hash: bytes, cltv_expiry: int) -> bytes:
        return (
            self._received_prefix
            + ripemd160(payment_hash)
            + self._received_mid
            + push_int(cltv_expiry)
            + self._RECEIVED_SUFFIX
        )


def offered_htlc_script(
    revocation_pubkey: bytes,
    local_htlc_pubkey: bytes,
    remote_htlc_pubkey: bytes,
    payment_hash: bytes,
) -> bytes:
    return HtlcScripts(revocation_pubkey, local_htlc_pubkey, remote_htlc_pubkey).offered(
        payment_hash
    )


def received_htlc_script(
    revocation_pubkey: bytes,
    local_htlc_pubkey: bytes,
    remote_htlc_pubkey: bytes,
    payment_hash: bytes,
    cltv_expiry: int,
) -> bytes:
    return HtlcScripts(revocation_pubkey, local_htlc_pubkey, remote_htlc_pubkey).received(
        payment_hash, cltv_expiry
    )

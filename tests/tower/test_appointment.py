"""Sealing an appointment: the documented construction, byte for byte; it opens with
the right txid only; a tampered blob, nonce or locator opens nothing; and the tower's
kit check refuses penalties that do not spend the breach transaction."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from channel.tx import OutPoint, Tx, TxIn, TxOut
from client.tower import seal_kit
from hub.tower.watcher import InvalidKit, parse_kit
from proto import tower_pb2
from protocol.driver.appointment import (
    AAD_PREFIX,
    blob_key,
    locator,
    open_sealed,
    seal,
)

TXID = hashlib.sha256(b"a revoked commitment").digest()
OTHER_TXID = hashlib.sha256(b"another transaction").digest()


def spend_of(txid: bytes, index: int, amount_sat: int = 1_000) -> Tx:
    tx = Tx(version=2, inputs=[TxIn(OutPoint(txid, index), sequence=0xFFFFFFFF)],
            outputs=[TxOut(amount_sat, b"\x00\x14" + b"\x11" * 20)], locktime=0)
    tx.inputs[0].witness = [b"\x30" * 72, b"\x01"]
    return tx


def test_the_construction_is_the_documented_one() -> None:
    assert locator(TXID) == hashlib.sha256(TXID).digest()[:16]
    assert blob_key(TXID) == hashlib.sha256(TXID + TXID).digest()
    loc, nonce, blob = seal(TXID, b"kit", random_bytes=lambda n: b"\x07" * n)
    assert loc == locator(TXID) and nonce == b"\x07" * 12
    # any ChaCha20-Poly1305 implementation opens it with the documented key and AAD
    assert ChaCha20Poly1305(hashlib.sha256(TXID + TXID).digest()).decrypt(
        nonce, blob, b"chanhub/tower/v1" + loc) == b"kit"
    assert AAD_PREFIX == b"chanhub/tower/v1"


def test_round_trip_and_wrong_txid_opens_nothing() -> None:
    kit = tower_pb2.JusticeKit(version=1, penalty_txs=[spend_of(TXID, 0).serialize()])
    appointment = seal_kit(TXID, kit)
    assert appointment.locator == locator(TXID)
    opened = open_sealed(TXID, appointment.nonce, appointment.encrypted_blob)
    assert opened is not None and tower_pb2.JusticeKit.FromString(opened) == kit
    assert open_sealed(OTHER_TXID, appointment.nonce, appointment.encrypted_blob) is None
    # a fresh nonce each time: the same kit never seals to the same bytes
    assert seal_kit(TXID, kit).encrypted_blob != appointment.encrypted_blob


def test_tampering_opens_nothing() -> None:
    loc, nonce, blob = seal(TXID, b"penalties")
    flipped = bytes([blob[0] ^ 1]) + blob[1:]
    assert open_sealed(TXID, nonce, flipped) is None
    assert open_sealed(TXID, bytes([nonce[0] ^ 1]) + nonce[1:], blob) is None
    assert open_sealed(TXID, nonce, blob[:-1]) is None
    assert open_sealed(TXID, nonce[:11], blob) is None
    assert open_sealed(TXID, nonce, blob[:15]) is None
    # the AAD binds the locator: the same ciphertext sealed under another AAD fails
    other_aad = ChaCha20Poly1305(blob_key(TXID)).encrypt(nonce, b"penalties", b"v2" + loc)
    assert open_sealed(TXID, nonce, other_aad) is None
    with pytest.raises(ValueError):
        locator(b"short")


def test_the_tower_refuses_a_kit_that_spends_anything_else() -> None:
    good = spend_of(TXID, 0)
    penalties, singles, second = parse_kit(TXID, tower_pb2.JusticeKit(
        version=1, penalty_txs=[good.serialize()], output_penalty_txs=[good.serialize()],
        second_stage_penalties=[tower_pb2.SecondStagePenalty(
            htlc_txid=OTHER_TXID, penalty_tx=spend_of(OTHER_TXID, 0).serialize())],
    ).SerializeToString())
    assert penalties == [good] and singles == {OutPoint(TXID, 0): good}
    assert list(second) == [OTHER_TXID]
    unrelated = spend_of(OTHER_TXID, 3)
    with pytest.raises(InvalidKit, match="other outputs"):
        parse_kit(TXID, tower_pb2.JusticeKit(version=1, penalty_txs=[
            unrelated.serialize()]).SerializeToString())
    with pytest.raises(InvalidKit, match="does not take"):
        parse_kit(TXID, tower_pb2.JusticeKit(version=1, penalty_txs=[good.serialize()],
                                             second_stage_penalties=[
            tower_pb2.SecondStagePenalty(htlc_txid=OTHER_TXID,
                                         penalty_tx=spend_of(OTHER_TXID, 1).serialize())],
        ).SerializeToString())
    with pytest.raises(InvalidKit, match="without penalties"):
        parse_kit(TXID, tower_pb2.JusticeKit(version=1).SerializeToString())
    with pytest.raises(InvalidKit, match="version"):
        parse_kit(TXID, tower_pb2.JusticeKit(version=2, penalty_txs=[
            good.serialize()]).SerializeToString())
    with pytest.raises(InvalidKit, match="undecodable"):
        parse_kit(TXID, b"\xff\xff\xff")

"""Everything a channel must remember, and its snapshot (a plain JSON-ready dict).

``ChannelData`` is the whole persisted state of one channel. ``to_snapshot`` /
``from_snapshot`` convert it to and from a dict of str/int/bool/None/list/dict (bytes as
hex), which is what ``Persist`` carries: the store can write it as JSON without
knowing anything about channels. The snapshot holds the channel seed and the peer's
revealed per-commitment secrets, so the store must encrypt it at rest (DESIGN rule 5).

The link state is deliberately not in it: a restored channel is always disconnected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from channel.commitment import Side
from channel.keys import Basepoints
from protocol.book import Book, FeeUpdate, Htlc, Mark, Removal
from protocol.config import LocalConfig
from protocol.table import ChannelState

SNAPSHOT_VERSION = 1


@dataclass(slots=True)
class RemoteParams:
    """What the peer announced in open_channel / accept_channel (binds US)."""

    dust_limit_sat: int
    max_htlc_value_in_flight_msat: int
    channel_reserve_sat: int
    htlc_minimum_msat: int
    to_self_delay: int
    max_accepted_htlcs: int
    minimum_depth: int
    basepoints: Basepoints
    upfront_shutdown_script: bytes = b""


@dataclass(slots=True)
class ChannelData:
    config: LocalConfig
    channel_seed: bytes
    local_is_funder: bool
    temporary_channel_id: bytes
    chain_hash: bytes
    close_script: bytes = b""  # where our cooperative close pays (shutdown scriptpubkey)
    funding_sat: int = 0
    push_msat: int = 0
    state: ChannelState = ChannelState.INIT
    channel_id: bytes = b""
    funding_txid: bytes = b""
    funding_output_index: int = 0
    remote: RemoteParams | None = None
    book: Book = field(default_factory=lambda: Book(0, 0, 0))
    # Commitment numbers. Ours: we hold exactly one unrevoked commitment, ``local_ctn``.
    # The peer's: ``remote_oldest_ctn`` is its oldest unrevoked one; ``remote_ctn`` the
    # latest we signed (remote_oldest_ctn + 1 while we wait for its revoke_and_ack).
    local_ctn: int = 0
    remote_ctn: int = 0
    remote_oldest_ctn: int = 0
    remote_current_point: bytes = b""  # for remote_oldest_ctn
    remote_next_point: bytes = b""  # for remote_oldest_ctn + 1
    remote_secrets: bytes = b""  # RevocationStore.to_bytes()
    # The peer's signatures of our current commitment: what lets us broadcast it.
    local_commit_signature: bytes = b""
    local_htlc_signatures: tuple[bytes, ...] = ()
    # Which of our latest commitment_signed / revoke_and_ack went out last: BOLT #2
    # retransmits them "in the same relative order as initially transmitted".
    last_sent_was_revoke: bool = False
    remote_commit_txids: dict[int, bytes] = field(default_factory=dict)
    local_ready_sent: bool = False
    remote_ready_received: bool = False
    local_shutdown_script: bytes | None = None
    remote_shutdown_script: bytes | None = None
    closing_fee_sent_sat: int | None = None
    closing_fee_received_sat: int | None = None
    closing_txid: bytes = b""
    # Set when channel_reestablish proved our state is stale: never broadcast it.
    data_loss: bool = False
    update_id: int = 0


# -- encoding ---------------------------------------------------------------------------


def _b(x: bytes | None) -> str | None:
    return None if x is None else x.hex()


def _ub(x: Any) -> bytes:
    if not isinstance(x, str):
        raise ValueError("expected hex string")
    return bytes.fromhex(x)


def _uob(x: Any) -> bytes | None:
    return None if x is None else _ub(x)


def _mark(m: Mark) -> list[Any]:
    return [m.origin.value, m.seq, m.local_ctn, m.remote_ctn]


def _umark(x: list[Any]) -> Mark:
    return Mark(Side(x[0]), int(x[1]), x[2], x[3])


def _htlc(h: Htlc) -> dict[str, Any]:
    r = h.removal
    return {
        "offered_by": h.offered_by.value, "htlc_id": h.htlc_id, "amount_msat": h.amount_msat,
        "payment_hash": h.payment_hash.hex(), "cltv_expiry": h.cltv_expiry,
        "onion": h.onion.hex(), "add": _mark(h.add), "policy_failure": h.policy_failure,
        "removal": None if r is None else {
            "mark": _mark(r.mark), "preimage": _b(r.preimage), "reason": r.reason.hex(),
        },
    }


def _uhtlc(x: dict[str, Any]) -> Htlc:
    r = x["removal"]
    return Htlc(
        Side(x["offered_by"]), int(x["htlc_id"]), int(x["amount_msat"]), _ub(x["payment_hash"]),
        int(x["cltv_expiry"]), _ub(x["onion"]), _umark(x["add"]),
        None if r is None else Removal(_umark(r["mark"]), _uob(r["preimage"]), _ub(r["reason"])),
        str(x["policy_failure"]),
    )


def _basepoints(b: Basepoints) -> list[str]:
    return [b.funding_pubkey.hex(), b.revocation_basepoint.hex(), b.payment_basepoint.hex(),
            b.delayed_payment_basepoint.hex(), b.htlc_basepoint.hex()]


@lru_cache(maxsize=64)
def _config_items(cfg: LocalConfig) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg))


def _config_dict(cfg: LocalConfig) -> dict[str, Any]:
    return dict(_config_items(cfg))  # (asdict deep-copies: slow on the hot path)


def to_snapshot(d: ChannelData) -> dict[str, Any]:
    """The plain, JSON-ready form of ``d`` (see the module docstring)."""
    r = d.remote
    book = d.book
    return {
        "version": SNAPSHOT_VERSION,
        "config": _config_dict(d.config),
        "channel_seed": d.channel_seed.hex(),
        "local_is_funder": d.local_is_funder,
        "temporary_channel_id": d.temporary_channel_id.hex(),
        "chain_hash": d.chain_hash.hex(),
        "close_script": d.close_script.hex(),
        "funding_sat": d.funding_sat,
        "push_msat": d.push_msat,
        "state": d.state.value,
        "channel_id": d.channel_id.hex(),
        "funding_txid": d.funding_txid.hex(),
        "funding_output_index": d.funding_output_index,
        "remote": None if r is None else {
            "dust_limit_sat": r.dust_limit_sat,
            "max_htlc_value_in_flight_msat": r.max_htlc_value_in_flight_msat,
            "channel_reserve_sat": r.channel_reserve_sat,
            "htlc_minimum_msat": r.htlc_minimum_msat,
            "to_self_delay": r.to_self_delay,
            "max_accepted_htlcs": r.max_accepted_htlcs,
            "minimum_depth": r.minimum_depth,
            "basepoints": _basepoints(r.basepoints),
            "upfront_shutdown_script": r.upfront_shutdown_script.hex(),
        },
        "book": {
            "local_base_msat": book.local_base_msat,
            "remote_base_msat": book.remote_base_msat,
            "base_feerate_per_kw": book.base_feerate_per_kw,
            "htlcs": [_htlc(h) for h in book.htlcs.values()],
            "fee_updates": [[f.feerate_per_kw, _mark(f.mark)] for f in book.fee_updates],
            "next_local_htlc_id": book.next_local_htlc_id,
            "next_remote_htlc_id": book.next_remote_htlc_id,
            "next_seq": book.next_seq,
        },
        "local_ctn": d.local_ctn,
        "remote_ctn": d.remote_ctn,
        "remote_oldest_ctn": d.remote_oldest_ctn,
        "remote_current_point": d.remote_current_point.hex(),
        "remote_next_point": d.remote_next_point.hex(),
        "remote_secrets": d.remote_secrets.hex(),
        "local_commit_signature": d.local_commit_signature.hex(),
        "local_htlc_signatures": [s.hex() for s in d.local_htlc_signatures],
        "last_sent_was_revoke": d.last_sent_was_revoke,
        "remote_commit_txids": {str(k): v.hex() for k, v in d.remote_commit_txids.items()},
        "local_ready_sent": d.local_ready_sent,
        "remote_ready_received": d.remote_ready_received,
        "local_shutdown_script": _b(d.local_shutdown_script),
        "remote_shutdown_script": _b(d.remote_shutdown_script),
        "closing_fee_sent_sat": d.closing_fee_sent_sat,
        "closing_fee_received_sat": d.closing_fee_received_sat,
        "closing_txid": d.closing_txid.hex(),
        "data_loss": d.data_loss,
        "update_id": d.update_id,
    }


def from_snapshot(s: dict[str, Any]) -> ChannelData:
    """Inverse of ``to_snapshot``; raises ValueError on a malformed snapshot."""
    if s.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported snapshot version {s.get('version')!r}")
    r = s["remote"]
    b = s["book"]
    book = Book(int(b["local_base_msat"]), int(b["remote_base_msat"]),
                int(b["base_feerate_per_kw"]))
    for hx in b["htlcs"]:
        h = _uhtlc(hx)
        book.htlcs[(h.offered_by, h.htlc_id)] = h
    book.fee_updates = [FeeUpdate(int(f[0]), _umark(f[1])) for f in b["fee_updates"]]
    book.next_local_htlc_id = int(b["next_local_htlc_id"])
    book.next_remote_htlc_id = int(b["next_remote_htlc_id"])
    book.next_seq = int(b["next_seq"])
    return ChannelData(
        config=LocalConfig(**s["config"]),
        channel_seed=_ub(s["channel_seed"]),
        local_is_funder=bool(s["local_is_funder"]),
        temporary_channel_id=_ub(s["temporary_channel_id"]),
        chain_hash=_ub(s["chain_hash"]),
        close_script=_ub(s["close_script"]),
        funding_sat=int(s["funding_sat"]),
        push_msat=int(s["push_msat"]),
        state=ChannelState(s["state"]),
        channel_id=_ub(s["channel_id"]),
        funding_txid=_ub(s["funding_txid"]),
        funding_output_index=int(s["funding_output_index"]),
        remote=None if r is None else RemoteParams(
            int(r["dust_limit_sat"]), int(r["max_htlc_value_in_flight_msat"]),
            int(r["channel_reserve_sat"]), int(r["htlc_minimum_msat"]), int(r["to_self_delay"]),
            int(r["max_accepted_htlcs"]), int(r["minimum_depth"]),
            Basepoints(*(_ub(p) for p in r["basepoints"])), _ub(r["upfront_shutdown_script"]),
        ),
        book=book,
        local_ctn=int(s["local_ctn"]),
        remote_ctn=int(s["remote_ctn"]),
        remote_oldest_ctn=int(s["remote_oldest_ctn"]),
        remote_current_point=_ub(s["remote_current_point"]),
        remote_next_point=_ub(s["remote_next_point"]),
        remote_secrets=_ub(s["remote_secrets"]),
        local_commit_signature=_ub(s["local_commit_signature"]),
        local_htlc_signatures=tuple(_ub(x) for x in s["local_htlc_signatures"]),
        last_sent_was_revoke=bool(s["last_sent_was_revoke"]),
        remote_commit_txids={int(k): _ub(v) for k, v in s["remote_commit_txids"].items()},
        local_ready_sent=bool(s["local_ready_sent"]),
        remote_ready_received=bool(s["remote_ready_received"]),
        local_shutdown_script=_uob(s["local_shutdown_script"]),
        remote_shutdown_script=_uob(s["remote_shutdown_script"]),
        closing_fee_sent_sat=s["closing_fee_sent_sat"],
        closing_fee_received_sat=s["closing_fee_received_sat"],
        closing_txid=_ub(s["closing_txid"]),
        data_loss=bool(s["data_loss"]),
        update_id=int(s["update_id"]),
    )

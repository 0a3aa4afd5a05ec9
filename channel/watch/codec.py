"""Plain-JSON forms of the watch's values (bytes as hex, transactions as raw hex)."""

from __future__ import annotations

import dataclasses
from typing import Any

from channel.commitment import ChannelParty, ChannelStatic, CommitmentHtlc, Side
from channel.keys import Basepoints
from channel.tx import OutPoint, Tx
from channel.watch import types as t

VERSION = 1


def tx(raw_hex: str) -> Tx:
    return Tx.parse(bytes.fromhex(raw_hex))


def htlc_to_json(h: CommitmentHtlc) -> dict[str, Any]:
    return {"offered_by": h.offered_by.value, "htlc_id": h.htlc_id,
            "amount_msat": h.amount_msat, "payment_hash": h.payment_hash.hex(),
            "cltv_expiry": h.cltv_expiry}


def htlc_from_json(x: dict[str, Any]) -> CommitmentHtlc:
    return CommitmentHtlc(Side(x["offered_by"]), int(x["htlc_id"]), int(x["amount_msat"]),
                          bytes.fromhex(x["payment_hash"]), int(x["cltv_expiry"]))


def _party_to_json(p: ChannelParty) -> dict[str, Any]:
    b = p.basepoints
    return {"basepoints": [b.funding_pubkey.hex(), b.revocation_basepoint.hex(),
                           b.payment_basepoint.hex(), b.delayed_payment_basepoint.hex(),
                           b.htlc_basepoint.hex()],
            "dust_limit_sat": p.dust_limit_sat, "to_self_delay": p.to_self_delay}


def _party_from_json(x: dict[str, Any]) -> ChannelParty:
    return ChannelParty(Basepoints(*(bytes.fromhex(p) for p in x["basepoints"])),
                        int(x["dust_limit_sat"]), int(x["to_self_delay"]))


def static_to_json(s: ChannelStatic) -> dict[str, Any]:
    return {"funding_txid": s.funding_outpoint.txid.hex(),
            "funding_output_index": s.funding_outpoint.index, "funding_sat": s.funding_sat,
            "local": _party_to_json(s.local), "remote": _party_to_json(s.remote),
            "local_is_funder": s.local_is_funder}


def static_from_json(x: dict[str, Any]) -> ChannelStatic:
    return ChannelStatic(OutPoint(bytes.fromhex(x["funding_txid"]),
                                  int(x["funding_output_index"])),
                         int(x["funding_sat"]), _party_from_json(x["local"]),
                         _party_from_json(x["remote"]), bool(x["local_is_funder"]))


def config_to_json(c: t.WatchConfig) -> dict[str, Any]:
    return dataclasses.asdict(c)


def config_from_json(x: dict[str, Any]) -> t.WatchConfig:
    return t.WatchConfig(**{k: int(v) for k, v in x.items()})


def local_to_json(c: t.LocalCommitment) -> dict[str, Any]:
    return {"commitment_number": c.commitment_number, "local_msat": c.local_msat,
            "remote_msat": c.remote_msat, "htlcs": [htlc_to_json(h) for h in c.htlcs],
            "feerate_per_kw": c.feerate_per_kw,
            "remote_commitment_signature": c.remote_commitment_signature.hex(),
            "remote_htlc_signatures": [s.hex() for s in c.remote_htlc_signatures]}


def local_from_json(x: dict[str, Any]) -> t.LocalCommitment:
    return t.LocalCommitment(
        int(x["commitment_number"]), int(x["local_msat"]), int(x["remote_msat"]),
        tuple(htlc_from_json(h) for h in x["htlcs"]), int(x["feerate_per_kw"]),
        bytes.fromhex(x["remote_commitment_signature"]),
        tuple(bytes.fromhex(s) for s in x["remote_htlc_signatures"]))


def remote_to_json(c: t.RemoteCommitment) -> dict[str, Any]:
    return {"commitment_number": c.commitment_number,
            "per_commitment_point": c.per_commitment_point.hex(), "local_msat": c.local_msat,
            "remote_msat": c.remote_msat, "htlcs": [htlc_to_json(h) for h in c.htlcs],
            "feerate_per_kw": c.feerate_per_kw}


def remote_from_json(x: dict[str, Any]) -> t.RemoteCommitment:
    return t.RemoteCommitment(
        int(x["commitment_number"]), bytes.fromhex(x["per_commitment_point"]),
        int(x["local_msat"]), int(x["remote_msat"]),
        tuple(htlc_from_json(h) for h in x["htlcs"]), int(x["feerate_per_kw"]))


def revoked_to_json(r: t.RevokedCommitment) -> dict[str, Any]:
    return {"commitment_number": r.commitment_number, "txid": r.txid.hex(),
            "htlc_outputs": [[i, htlc_to_json(h)] for i, h in r.htlc_outputs],
            "to_local_output_index": r.to_local_output_index,
            "to_local_amount_sat": r.to_local_amount_sat,
            "feerate_per_kw": r.feerate_per_kw}


def revoked_from_json(x: dict[str, Any]) -> t.RevokedCommitment:
    index = x["to_local_output_index"]
    return t.RevokedCommitment(
        int(x["commitment_number"]), bytes.fromhex(x["txid"]),
        tuple((int(i), htlc_from_json(h)) for i, h in x["htlc_outputs"]),
        None if index is None else int(index), int(x["to_local_amount_sat"]),
        None if x.get("feerate_per_kw") is None else int(x["feerate_per_kw"]))


_EVENTS: dict[str, type[Any]] = {cls.__name__: cls for cls in (
    t.FundingConfirmed, t.FundingDepthReached, t.ChannelClosedOnChain, t.PreimageLearned,
    t.ClaimConfirmed, t.ClaimBuried, t.ChannelResolved, t.OutputLost, t.GoOnChain,
    t.ClaimUneconomical)}


def event_to_json(e: t.WatchEvent) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(e):
        value = getattr(e, f.name)
        fields[f.name] = value.hex() if isinstance(value, bytes) else value
    return {"type": type(e).__name__, "fields": fields}


def event_from_json(x: dict[str, Any]) -> t.WatchEvent:
    cls = _EVENTS.get(x["type"])
    if cls is None:
        raise ValueError(f"unknown watch event {x['type']!r}")
    values = {}
    for f in dataclasses.fields(cls):
        value = x["fields"][f.name]
        values[f.name] = bytes.fromhex(value) if f.type == "bytes" else value
    event: t.WatchEvent = cls(**values)
    return event

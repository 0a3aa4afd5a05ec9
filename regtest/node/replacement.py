"""Replacement of mempool transactions: full RBF as Bitcoin Core v28 does it.

Core v28 runs with `-mempoolfullrbf=1` by default: a transaction that spends
an input some mempool transaction already spends replaces it, signalled
(BIP125) or not, when it passes the rules of `ReplacementChecks`
(validation.cpp) and `policy/rbf.cpp`, checked in this order:

1. (rule 6, `PaysMoreThanConflicts`) its feerate is higher than that of
   every transaction it conflicts with directly, feerates compared as Core's
   `CFeeRate` keeps them: whole satoshis per 1000 vbytes, rounded down;
2. (rule 5, `GetEntriesForConflicts`) the direct conflicts and their
   descendants, counted per conflict (a shared descendant counts twice, as
   in Core), are at most MAX_REPLACEMENT_CANDIDATES = 100;
3. (rule 2, `HasNoNewUnconfirmed`) it spends no unconfirmed output that the
   transactions it replaces did not already spend;
4. (rules 3 and 4, `PaysForRBF`) its fee is at least the total fee of
   everything it evicts, and the difference pays the incremental relay fee
   (1 sat/vB) on its own size.

Before those, `PreChecks` refuses a transaction that spends an output of a
transaction it conflicts with (`bad-txns-spends-conflicting-tx`).  A
replacement that passes evicts its direct conflicts and all their
descendants.  The texts are Core's, so a caller reading the reject reason
of a fee bump sees what bitcoind would say.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from btclib.tx.tx import Tx

from regtest.node.errors import TxRejected
from regtest.node.params import COIN, INCREMENTAL_RELAY_FEE_SAT_PER_KVB, format_money

if TYPE_CHECKING:
    from regtest.node.mempool import Mempool, MempoolEntry

MAX_REPLACEMENT_CANDIDATES = 100


def fee_rate_sat_per_kvb(fee_sat: int, vsize: int) -> int:
    """Core's CFeeRate(fee, size): satoshis per 1000 vbytes, rounded down."""
    return fee_sat * 1000 // vsize if vsize > 0 else 0


def format_fee_rate(sat_per_kvb: int) -> str:
    """Core's CFeeRate::ToString: `0.00001000 BTC/kvB`."""
    return f"{sat_per_kvb // COIN}.{sat_per_kvb % COIN:08d} BTC/kvB"


def fee_for_size(sat_per_kvb: int, vsize: int) -> int:
    """Core's CFeeRate::GetFee: the fee at this rate, rounded up, at least 1 sat."""
    fee = -(-sat_per_kvb * vsize // 1000)
    return max(fee, 1) if sat_per_kvb > 0 and vsize > 0 else fee


def check_not_spending_conflicts(
    txid: bytes, ancestors: Iterable[bytes], conflicts: set[bytes]
) -> None:
    """Core's EntriesAndTxidsDisjoint: a replacement may not spend what it replaces."""
    for ancestor in sorted(ancestors):
        if ancestor in conflicts:
            raise TxRejected(
                "bad-txns-spends-conflicting-tx",
                f"{txid.hex()} spends conflicting transaction {ancestor.hex()}",
            )


def replacement_evictions(
    mempool: Mempool,
    tx: Tx,
    txid: bytes,
    fee_sat: int,
    vsize: int,
    conflicts: Sequence[MempoolEntry],
) -> set[bytes]:
    """Run Core's ReplacementChecks; return every txid the replacement evicts.

    `conflicts` are the mempool transactions spending an input of `tx`
    (its direct conflicts), in a fixed order so the first one quoted in a
    refusal does not depend on hashing.
    """
    new_rate = fee_rate_sat_per_kvb(fee_sat, vsize)
    for conflict in conflicts:
        old_rate = fee_rate_sat_per_kvb(conflict.fee, conflict.vsize)
        if new_rate <= old_rate:
            raise TxRejected(
                "insufficient fee",
                f"rejecting replacement {txid.hex()}; new feerate {format_fee_rate(new_rate)} "
                f"<= old feerate {format_fee_rate(old_rate)}",
            )
    candidates = 0
    for conflict in conflicts:
        candidates += 1 + len(mempool.descendants_of(conflict.txid))
        if candidates > MAX_REPLACEMENT_CANDIDATES:
            raise TxRejected(
                "too many potential replacements",
                f"rejecting replacement {txid.hex()}; too many potential replacements "
                f"({candidates} > {MAX_REPLACEMENT_CANDIDATES})",
            )
    evicted: set[bytes] = set()
    for conflict in conflicts:
        evicted.add(conflict.txid)
        evicted |= mempool.descendants_of(conflict.txid)
    parents_of_conflicts = {
        tx_in.prev_out.tx_id for conflict in conflicts for tx_in in conflict.tx.vin
    }
    for index, tx_in in enumerate(tx.vin):
        parent = tx_in.prev_out.tx_id
        if parent not in parents_of_conflicts and parent in mempool.entries:
            raise TxRejected(
                "replacement-adds-unconfirmed",
                f"replacement {txid.hex()} adds unconfirmed input, idx {index}",
            )
    evicted_fees = sum(mempool.entries[victim].fee for victim in evicted)
    if fee_sat < evicted_fees:
        raise TxRejected(
            "insufficient fee",
            f"rejecting replacement {txid.hex()}, less fees than conflicting txs; "
            f"{format_money(fee_sat)} < {format_money(evicted_fees)}",
        )
    relay_fee = fee_for_size(INCREMENTAL_RELAY_FEE_SAT_PER_KVB, vsize)
    if fee_sat - evicted_fees < relay_fee:
        raise TxRejected(
            "insufficient fee",
            f"rejecting replacement {txid.hex()}, not enough additional fees to relay; "
            f"{format_money(fee_sat - evicted_fees)} < {format_money(relay_fee)}",
        )
    return evicted

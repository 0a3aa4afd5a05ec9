"""The funding output (BOLT #3 "Funding Transaction Output").

Theory of operation. The funder's wallet builds the funding transaction; channel/
only fixes the output it must contain: P2WSH of ``2 <key1> <key2> 2
OP_CHECKMULTISIG`` with the two funding pubkeys in lexicographic order, so both
parties derive the same script without negotiating an order.
"""

from __future__ import annotations

from collections.abc import Sequence

from channel import scripts
from channel.tx import Tx, TxIn, TxOut


def funding_output(
    local_funding_pubkey: bytes, remote_funding_pubkey: bytes, funding_sat: int
) -> TxOut:
    return TxOut(
        funding_sat,
        scripts.p2wsh(scripts.funding_script(local_funding_pubkey, remote_funding_pubkey)),
    )


def build_funding_tx(inputs: Sequence[TxIn], outputs: Sequence[TxOut], locktime: int = 0) -> Tx:
    """Version 2 transaction with outputs sorted BIP69 (amount, scriptPubKey); the
    caller finds the funding output index with ``funding_output_index``."""
    return Tx(
        2, list(inputs), sorted(outputs, key=lambda o: (o.amount_sat, o.script_pubkey)), locktime
    )


def funding_output_index(tx: Tx, output: TxOut) -> int:
    return tx.outputs.index(output)

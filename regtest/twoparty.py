"""Two channel parties in one process, joined by an in-memory link, on a real chain.

Theory of operation
-------------------
This is how the demo's breach act (until the disputes issue moves it onto the hub)
and the integration tests run protocol/ end to end without a hub: two
`protocol.Channel` state machines exchange their messages through a queue, and
every transaction they produce goes to a node through `channel.chain.BitcoinRpc`,
the same client the hub uses, so the node's consensus rules judge it. Nothing is mocked: signatures,
commitments, revocations, the funding transaction (built by the funder from its
own coin), closes, sweeps and penalties are the real ones.

The driver executes each action list in order, as the hub will: `Send` goes on
the link, `Persist` snapshots are kept (a copy, as a store would), `Broadcast`s
and events are recorded for the caller. It is single-threaded and synchronous
towards the state machines; only the chain calls are awaited.

Party "a" is the funder and payer, "b" the fundee and payee.
"""

from __future__ import annotations

import copy
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

from btclib.b32 import address_from_witness

from channel.chain import BitcoinRpc
from channel.commitment import Side, commitment_number_from_tx
from channel.keys import pubkey_from_secret
from channel.penalty import build_penalty_tx
from channel.scripts import hash160, p2wpkh, p2wpkh_script_code
from channel.spend import SpendableOutput, build_spend_tx
from channel.sweep import sweep_to_local, sweep_to_remote
from channel.tx import OutPoint, Tx
from proto import peer_pb2
from protocol import (
    Action,
    Broadcast,
    Channel,
    ChannelClosed,
    ChannelOpened,
    FundingNeeded,
    FundingSigned,
    HtlcFulfilled,
    HtlcReceived,
    LocalConfig,
    Persist,
    Send,
)

REGTEST_GENESIS_HASH = bytes.fromhex(
    "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
)[::-1]  # internal byte order, as BOLT #2's chain_hash

E = TypeVar("E")


class TwoPartyError(Exception):
    """The two parties did not reach the state the caller asked for."""


def derived_secret(label: str) -> bytes:
    """Fixed secrets per label, so runs are reproducible (demo and tests only)."""
    return hashlib.sha256(f"chanhub two-party: {label}".encode()).digest()


@dataclass
class Party:
    """One side: its state machine and what its actions left for the caller."""

    name: str
    channel: Channel
    wallet_secret: bytes
    close_script: bytes
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    events: list[Action] = field(default_factory=list)
    broadcasts: list[Broadcast] = field(default_factory=list)

    @property
    def wallet_pubkey(self) -> bytes:
        return pubkey_from_secret(self.wallet_secret)

    @property
    def wallet_script(self) -> bytes:
        return p2wpkh(self.wallet_pubkey)

    def events_of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]


class TwoPartyChannel:
    """A funder "a" and a fundee "b" with one channel between them."""

    def __init__(
        self,
        rpc: BitcoinRpc,
        *,
        label: str = "demo",
        to_self_delay: int = 6,
        feerate_per_kw: int = 2_500,
    ) -> None:
        self.rpc = rpc
        self.feerate_per_kw = feerate_per_kw
        config = LocalConfig(to_self_delay=to_self_delay, minimum_depth=1)
        self.a = Party(
            "a",
            Channel.outbound(
                config=config,
                channel_seed=derived_secret(f"{label} a seed"),
                temporary_channel_id=derived_secret(f"{label} temporary channel id"),
                chain_hash=REGTEST_GENESIS_HASH,
                close_script=p2wpkh(pubkey_from_secret(derived_secret(f"{label} a close"))),
            ),
            derived_secret(f"{label} a wallet"),
            p2wpkh(pubkey_from_secret(derived_secret(f"{label} a close"))),
        )
        self.b = Party(
            "b",
            Channel.inbound(
                config=config,
                channel_seed=derived_secret(f"{label} b seed"),
                chain_hash=REGTEST_GENESIS_HASH,
                close_script=p2wpkh(pubkey_from_secret(derived_secret(f"{label} b close"))),
            ),
            derived_secret(f"{label} b wallet"),
            p2wpkh(pubkey_from_secret(derived_secret(f"{label} b close"))),
        )
        self._link: deque[tuple[Party, peer_pb2.PeerMessage]] = deque()
        self._height = 0
        self._miner_address: str | None = None

    # -- the link -------------------------------------------------------------------

    def other(self, party: Party) -> Party:
        return self.b if party is self.a else self.a

    def run(self, party: Party, actions: list[Action]) -> None:
        """Carry out one action list in order, as a daemon would."""
        for action in actions:
            if isinstance(action, Send):
                self._link.append((self.other(party), action.message))
            elif isinstance(action, Persist):
                party.snapshots.append(copy.deepcopy(action.snapshot))
            elif isinstance(action, Broadcast):
                party.broadcasts.append(action)
            else:
                party.events.append(action)

    def pump(self) -> None:
        """Deliver messages until the link is quiet."""
        while self._link:
            party, message = self._link.popleft()
            self.run(party, party.channel.handle(message, height=self._height))

    def commit_both_ways(self, *, first: Party) -> None:
        """`first` signs; the other revokes and signs back; `first` revokes."""
        self.pump()
        self.run(first, first.channel.commit())
        self.pump()
        second = self.other(first)
        if second.channel.can_commit():
            self.run(second, second.channel.commit())
            self.pump()

    def balances_msat(self) -> tuple[int, int]:
        """("a", "b") balances on the latest commitment, HTLCs excluded, before the fee."""
        view = self.a.channel.latest_view(Side.LOCAL)
        return view.local_msat, view.remote_msat

    # -- the chain ------------------------------------------------------------------

    async def mine(self, nblocks: int) -> None:
        if self._miner_address is None:
            self._miner_address = await self.rpc.getnewaddress()
        await self.rpc.generatetoaddress(nblocks, self._miner_address)
        self._height = await self.rpc.getblockcount()

    async def broadcast(self, tx: Tx) -> str:
        return await self.rpc.sendrawtransaction(tx.serialize())

    # -- the story --------------------------------------------------------------------

    async def open(self, funding_sat: int) -> Tx:
        """Fund "a" from the node's faucet, open the channel, confirm the funding tx."""
        self._height = await self.rpc.getblockcount()
        funding_script = await self._request_funding(funding_sat)
        coin = await self._coin_for(self.a, funding_script, funding_sat)
        funding_tx = build_spend_tx([coin], funding_script, self.feerate_per_kw)
        assert funding_tx.outputs[0].amount_sat == funding_sat
        self.run(self.a, self.a.channel.funding_outpoint(funding_tx.txid(), 0))
        self.pump()
        # Broadcast only now: the fundee has signed our first commitment, so the
        # funds can always come back to us.
        signed = self.a.events_of(FundingSigned)
        if not signed or signed[-1].funding_txid != funding_tx.txid():
            raise TwoPartyError("the fundee did not sign the first commitment")
        await self.broadcast(funding_tx)
        await self.mine(1)
        for party in (self.a, self.b):
            self.run(party, party.channel.funding_confirmed())
        self.pump()
        if not (self.a.events_of(ChannelOpened) and self.b.events_of(ChannelOpened)):
            raise TwoPartyError("the channel did not open")
        return funding_tx

    async def _request_funding(self, funding_sat: int) -> bytes:
        self.run(self.a, self.a.channel.open(
            funding_sat=funding_sat, push_msat=0, feerate_per_kw=self.feerate_per_kw))
        self.pump()
        needed = self.a.events_of(FundingNeeded)
        if not needed:
            raise TwoPartyError("the fundee did not accept the channel")
        return needed[-1].script_pubkey

    async def _coin_for(self, party: Party, destination: bytes, amount_sat: int) -> SpendableOutput:
        """A confirmed coin of `party` that pays exactly `amount_sat` to `destination`
        once spent with our fee rate (the fee does not depend on the amount)."""
        probe_sat = 10**8
        probe = self._spendable(party, OutPoint(b"\x00" * 32, 0), probe_sat)
        spent = build_spend_tx([probe], destination, self.feerate_per_kw)
        coin_sat = amount_sat + probe_sat - spent.outputs[0].amount_sat
        address = await self._address(party)
        txid = await self.rpc.sendtoaddress(address, coin_sat)
        await self.mine(1)
        decoded = await self.rpc.getrawtransaction_verbose(txid)
        vout = next(
            int(out["n"]) for out in decoded["vout"]
            if bytes.fromhex(out["scriptPubKey"]["hex"]) == party.wallet_script
        )
        return self._spendable(party, OutPoint(bytes.fromhex(txid)[::-1], vout), coin_sat)

    def _spendable(self, party: Party, outpoint: OutPoint, amount_sat: int) -> SpendableOutput:
        return SpendableOutput(
            outpoint=outpoint,
            amount_sat=amount_sat,
            script_code=p2wpkh_script_code(party.wallet_pubkey),
            signing_key=party.wallet_secret,
            witness_suffix=(party.wallet_pubkey,),
        )

    async def _address(self, party: Party) -> str:
        return str(address_from_witness(0, hash160(party.wallet_pubkey), "regtest"))

    def pay(self, amount_msat: int, label: str) -> bytes:
        """"a" pays "b" `amount_msat` off-chain; returns the preimage "a" received."""
        preimage = derived_secret(f"preimage {label}")
        self.run(self.a, self.a.channel.add_htlc(
            amount_msat, hashlib.sha256(preimage).digest(), self._height + 40,
            height=self._height))
        self.commit_both_ways(first=self.a)
        received = self.b.events_of(HtlcReceived)
        if not received or received[-1].amount_msat != amount_msat:
            raise TwoPartyError("the payee did not receive the HTLC")
        self.run(self.b, self.b.channel.fulfill_htlc(received[-1].htlc_id, preimage))
        self.commit_both_ways(first=self.b)
        fulfilled = self.a.events_of(HtlcFulfilled)
        if not fulfilled or fulfilled[-1].payment_preimage != preimage:
            raise TwoPartyError("the payer did not learn the preimage")
        return preimage

    async def cooperative_close(self, *, rounds: int = 20) -> tuple[Tx, int]:
        """Negotiate, broadcast and confirm the closing tx: (tx, fee_sat)."""
        self.run(self.a, self.a.channel.shutdown())
        for _ in range(rounds):
            self.pump()
            closed = self.a.events_of(ChannelClosed)
            if closed:
                break
        else:
            raise TwoPartyError(f"no closing agreement after {rounds} rounds")
        closing_tx = Tx.parse(self.a.broadcasts[-1].raw_tx)
        await self.broadcast(closing_tx)
        await self.mine(1)
        return closing_tx, closed[-1].fee_sat

    async def force_close(self, party: Party, reason: str) -> Tx:
        """`party` publishes its latest commitment; returns it, confirmed."""
        self.run(party, party.channel.fail(reason))
        commitment_tx = Tx.parse(party.broadcasts[-1].raw_tx)
        await self.broadcast(commitment_tx)
        await self.mine(1)
        return commitment_tx

    def sweep_to_local(self, party: Party, own_commitment_tx: Tx) -> Tx:
        """`party`'s delayed output of its own commitment (valid after to_self_delay)."""
        channel = party.channel
        number = commitment_number_from_tx(channel.static, own_commitment_tx)
        return sweep_to_local(channel.static, channel.secrets, own_commitment_tx, number,
                              party.wallet_script, self.feerate_per_kw)

    def sweep_to_remote(self, party: Party, peer_commitment_tx: Tx) -> Tx:
        """`party`'s output of the peer's commitment (spendable at once)."""
        channel = party.channel
        return sweep_to_remote(channel.static, channel.secrets, peer_commitment_tx,
                               party.wallet_script, self.feerate_per_kw)

    def penalty(self, party: Party, revoked_tx: Tx) -> Tx:
        """Everything the cheater's revoked commitment pays it, taken by `party`.

        For a commitment with no HTLC in flight (the driver's payments always settle);
        one with HTLCs needs them passed to `build_penalty_tx`, which the hub's chain
        watcher will keep per revoked commitment."""
        channel = party.channel
        number = commitment_number_from_tx(channel.static.mirrored(), revoked_tx)
        secret = channel.revocations.get_commitment_secret(number)
        return build_penalty_tx(channel.static, channel.secrets, revoked_tx, secret, (),
                                party.wallet_script, self.feerate_per_kw)

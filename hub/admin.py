"""The Admin service (``hub.edge.AdminService``) over a ``HubNode``: the operator's
view of clients, channels and forwards, the fee policy, closes, the hub's wallet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from channel.chain.services import ChainServices
from hub import ledger
from hub.edge import FailedPrecondition, InvalidArgument, NotFound
from hub.policy import FeePolicy, PolicyError
from proto import admin_pb2, client_pb2
from protocol.table import ENDED_STATES

if TYPE_CHECKING:
    from hub.node import HubNode


class AdminApi:
    """The Admin service (``hub.edge.AdminService``) over a ``HubNode``."""

    def __init__(self, node: HubNode) -> None:
        self.node = node

    async def get_info(self) -> admin_pb2.GetInfoResponse:
        node = self.node
        live = [d for d in node.drivers.values()
                if d.channel.state not in ENDED_STATES]
        hub_msat = sum(node.channel_proto(d).remote_balance_msat for d in live)
        clients = await node.db.read(ledger.list_clients)
        fees = await node.db.read(ledger.fees_earned_msat)
        return admin_pb2.GetInfoResponse(
            hub=node._info(), client_count=len(clients),
            connected_client_count=sum(s.connected for s in node.sessions.values()),
            open_channel_count=len(live), hub_channel_balance_msat=hub_msat,
            onchain_confirmed_sat=(node.chain.wallet.balance().confirmed_sat
                                   if node.chain is not None else 0),
            fees_earned_msat=fees)

    async def list_clients(self, request: admin_pb2.ListClientsRequest
                           ) -> admin_pb2.ListClientsResponse:
        node = self.node
        out = []
        for node_id, first_seen, last_seen in await node.db.read(ledger.list_clients):
            session = node.sessions.get(node_id)
            connected = session is not None and session.connected
            if request.connected_only and not connected:
                continue
            channels = [node.channel_proto(d) for d in node.drivers.values()
                        if d.peer_node_id == node_id]
            live = [c for c in channels if c.state != client_pb2.CHANNEL_STATE_CLOSED]
            out.append(admin_pb2.ClientSummary(
                node_id=node_id, connected=connected, first_seen_unix=first_seen,
                last_seen_unix=last_seen, open_channel_count=len(live),
                local_balance_msat=sum(c.local_balance_msat for c in live),
                remote_balance_msat=sum(c.remote_balance_msat for c in live)))
        return admin_pb2.ListClientsResponse(clients=out)

    async def list_channels(self, request: admin_pb2.ListChannelsRequest
                            ) -> client_pb2.ListChannelsResponse:
        return self.node._channels(bytes(request.client_node_id) or None, request.filter)

    async def list_payments(self, request: admin_pb2.ListPaymentsRequest
                            ) -> admin_pb2.ListPaymentsResponse:
        records, cursor = await self.node._page(bytes(request.client_node_id) or None,
                                                request.filter)
        return admin_pb2.ListPaymentsResponse(forwards=[_forward_proto(r) for r in records],
                                              next_cursor=cursor)

    async def set_fee_policy(self, request: admin_pb2.SetFeePolicyRequest
                             ) -> client_pb2.FeePolicy:
        try:
            policy = FeePolicy(int(request.fee_policy.base_fee_msat),
                               int(request.fee_policy.fee_rate_ppm))
        except PolicyError as exc:
            raise InvalidArgument(str(exc)) from None
        await self.node.writer.write(ledger.set_fee_policy(policy))
        self.node.fee_policy = policy
        return client_pb2.FeePolicy(base_fee_msat=policy.base_msat, fee_rate_ppm=policy.fee_ppm)

    async def close_channel(self, request: client_pb2.CloseChannelRequest
                            ) -> client_pb2.CloseChannelResponse:
        for driver in self.node.drivers.values():
            if driver.channel_id == bytes(request.channel_id):
                response = self.node.close_channel(driver, request.force)
                if request.force:  # the commitment goes out now, client online or not
                    await self.node.settle_offline(driver)
                return response
        raise NotFound(f"no channel {bytes(request.channel_id).hex()}")

    def _chain(self) -> ChainServices:
        if self.node.chain is None:
            raise FailedPrecondition("this hub has no chain attached (no wallet)")
        return self.node.chain

    async def new_wallet_address(self) -> admin_pb2.NewWalletAddressResponse:
        chain = self._chain()
        address = chain.wallet.new_address()
        await self.node._persist_chain(chain.to_json())  # the index, before anyone pays it
        return admin_pb2.NewWalletAddressResponse(address=address)

    async def get_wallet_balance(self) -> admin_pb2.WalletBalance:
        chain = self._chain()
        await chain.wallet.scan_mempool(chain.rpc)
        balance = chain.wallet.balance()
        return admin_pb2.WalletBalance(confirmed_sat=balance.confirmed_sat,
                                       unconfirmed_sat=balance.unconfirmed_sat,
                                       reserved_sat=balance.reserved_sat)


def _forward_proto(record: ledger.ForwardRecord) -> admin_pb2.Forward:
    state = {ledger.IN_FLIGHT: client_pb2.PAYMENT_STATE_IN_FLIGHT,
             ledger.SUCCEEDED: client_pb2.PAYMENT_STATE_SUCCEEDED,
             ledger.FAILED: client_pb2.PAYMENT_STATE_FAILED}[record.state]
    return admin_pb2.Forward(
        payment_id=record.payment_id, payer_node_id=record.payer_node_id,
        payee_node_id=record.payee_node_id or b"", payment_hash=record.payment_hash,
        amount_in_msat=record.amount_in_msat, amount_out_msat=record.amount_out_msat,
        fee_msat=record.fee_msat, state=state,
        failure_reason=record.failure_reason,  # type: ignore[arg-type]
        created_at_unix=record.created_at_unix, resolved_at_unix=record.resolved_at_unix)



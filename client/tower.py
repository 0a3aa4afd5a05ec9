"""A channel party's side of a watchtower: the appointment for each revoked state, and
the ``TowerClient`` that delivers them (proto/tower.proto, docs/tower.md).

Theory of operation
-------------------
1. **The kit.** When the peer revokes a commitment, the state machine emits
   ``Watch("revoked_commitment")`` with that commitment's txid, its to_local output
   and its HTLC outputs, and the per-commitment secret is in ``Channel.revocations``.
   That is all a penalty needs (BOLT #5 "Revoked Transaction Close Handling"), so
   the party signs every penalty *now*, while it is online, and the tower only
   broadcasts them:

   - ``penalty_txs``: to_local and every HTLC output, in as few transactions as fit
     Core's 400,000 WU standardness limit (``split_by_weight``);
   - ``output_penalty_txs``: the same outputs, one transaction each. If the cheater
     gets a second-stage HTLC transaction confirmed first, the combined penalty that
     spends that HTLC output is dead; the tower then sends these for what is left;
   - ``second_stage_penalties``: for every HTLC output, the cheater's HTLC-success or
     HTLC-timeout transaction is known in advance (BOLT #3 fixes it; its txid does not
     depend on the witness), so the penalty taking its output (revocation branch of
     the same to_local-style script) is signed too, keyed by that txid.

   The outputs are named by the Watch record itself (our own durable data: no
   transaction to check them against is needed). The second-stage transactions pay
   the HTLC-success/timeout fee at the *revoked commitment's* feerate, which the
   record carries (``Watch.feerate_per_kw``), so an ``update_fee`` between that
   commitment and its revocation changes nothing. A record stored before it carried
   the feerate has None there: ``appointment_for_watch`` then reads it from the
   channel's book, as it did before (right unless an update_fee came between).
2. **The seal.** ``protocol.driver.appointment.seal``: locator and key from the
   revoked commitment's txid; the tower can open nothing before that txid is in a
   block.
3. **Delivery.** ``TowerClient.enqueue`` writes the appointment to a durable outbox
   (one file per appointment in a directory, written then renamed, fsynced) before it
   returns, so an appointment survives the tower being down and our own restart;
   ``TowerClient.run`` connects (pinned TLS, node-key challenge, via
   ``client.transport.HubTransport`` with the Tower stub), registers, sends every
   appointment in the outbox oldest first and deletes each once the tower
   acknowledged it; on failure it retries with a doubling delay (at most
   ``max_retry_seconds``). RESOURCE_EXHAUSTED (quota full) keeps the appointment
   and is logged: the operator of the tower must raise the quota. One the tower will
   never take (above its ``max_blob_bytes``, or INVALID_ARGUMENT) is set aside
   (renamed ``.refused``, logged) so that it does not block the ones after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import trio

from channel import scripts
from channel.commitment import ChannelStatic, Side
from channel.errors import TransactionError
from channel.htlc import build_htlc_tx
from channel.keys import ChannelSecrets
from channel.penalty import revoked_keys, revoked_record_outputs, revoked_to_local_script
from channel.spend import SpendableOutput, build_spend_tx
from channel.tx import OutPoint, Tx
from channel.watch.claims import split_by_weight
from channel.watch.types import MAX_STANDARD_TX_WEIGHT
from client.errors import ChanhubError
from client.transport import HubIdentityMismatch, HubPin, HubTransport
from proto import tower_pb2, tower_pb2_grpc
from protocol import Channel, Watch
from protocol.driver.appointment import seal
from protocol.driver.driver import ChannelDriver
from protocol.driver.grpc_bridge import GrpcBridge, RpcStatusError
from protocol.driver.wire_auth import PinMismatch

log = logging.getLogger(__name__)

JUSTICE_KIT_VERSION = 1


class TowerError(ChanhubError):
    """The tower refused or could not be reached (``code`` is the gRPC status; a
    certificate or node id other than the pinned ones is UNAUTHENTICATED)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"tower: {details} ({code.name})")
        self.code = code
        self.details = details


# -- the kit ---------------------------------------------------------------------------


def revoked_outputs(static: ChannelStatic, secrets: ChannelSecrets, watch: Watch,
                    per_commitment_secret: bytes) -> list[SpendableOutput]:
    """to_local and every HTLC output of the peer's revoked commitment ``watch``
    (``Watch("revoked_commitment")``), each spendable with the revocation key."""
    return revoked_record_outputs(static, secrets, watch.txid, watch.htlc_outputs,
                                  watch.to_local_output_index, watch.to_local_amount_sat,
                                  per_commitment_secret)


def second_stage_penalties(static: ChannelStatic, secrets: ChannelSecrets, watch: Watch,
                           per_commitment_secret: bytes, *, commitment_feerate_per_kw: int,
                           destination_script_pubkey: bytes, penalty_feerate_per_kw: int
                           ) -> list[tuple[bytes, Tx]]:
    """(second-stage txid, penalty) for each HTLC output of the revoked commitment:
    the cheater's HTLC-timeout (HTLCs it offered) or HTLC-success (HTLCs it received)
    transaction as BOLT #3 builds it, and the revocation spend of its output."""
    keys, privkey = revoked_keys(static, secrets, per_commitment_secret)
    wscript = revoked_to_local_script(static, keys)
    spk = scripts.p2wsh(wscript)
    out: list[tuple[bytes, Tx]] = []
    for index, h in watch.htlc_outputs:
        htlc_tx = build_htlc_tx(watch.txid, index, h.amount_msat // 1000,
                                h.offered_by is Side.REMOTE, h.cltv_expiry, spk,
                                commitment_feerate_per_kw)
        second = SpendableOutput(OutPoint(htlc_tx.txid(), 0), htlc_tx.outputs[0].amount_sat,
                                 wscript, privkey, (b"\x01", wscript),
                                 description=f"second_stage {h.htlc_id}")
        try:
            out.append((htlc_tx.txid(), build_spend_tx([second], destination_script_pubkey,
                                                       penalty_feerate_per_kw)))
        except TransactionError as exc:  # an output too small to pay its own fee
            log.info("no second-stage penalty for htlc %d: %s", h.htlc_id, exc)
    return out


def build_justice_kit(static: ChannelStatic, secrets: ChannelSecrets, watch: Watch,
                      per_commitment_secret: bytes, *, commitment_feerate_per_kw: int,
                      destination_script_pubkey: bytes, penalty_feerate_per_kw: int,
                      max_tx_weight: int = MAX_STANDARD_TX_WEIGHT) -> tower_pb2.JusticeKit:
    """Every penalty for the revoked commitment ``watch``, signed (module docstring).
    Raises ``TransactionError`` when nothing of it is revocable or worth taking."""
    if watch.kind != "revoked_commitment":
        raise ValueError(f"not a revoked_commitment watch: {watch.kind}")
    outputs = revoked_outputs(static, secrets, watch, per_commitment_secret)
    if not outputs:
        raise TransactionError("the revoked commitment has no revocable output")
    kit = tower_pb2.JusticeKit(version=JUSTICE_KIT_VERSION)
    for group in split_by_weight(outputs, destination_script_pubkey, max_tx_weight):
        kit.penalty_txs.append(build_spend_tx(group, destination_script_pubkey,
                                              penalty_feerate_per_kw).serialize())
    if len(outputs) > 1:
        for o in outputs:
            try:
                kit.output_penalty_txs.append(build_spend_tx(
                    [o], destination_script_pubkey, penalty_feerate_per_kw).serialize())
            except TransactionError as exc:
                log.info("no separate penalty for %s: %s", o.description, exc)
    for htlc_txid, penalty in second_stage_penalties(
            static, secrets, watch, per_commitment_secret,
            commitment_feerate_per_kw=commitment_feerate_per_kw,
            destination_script_pubkey=destination_script_pubkey,
            penalty_feerate_per_kw=penalty_feerate_per_kw):
        kit.second_stage_penalties.add(htlc_txid=htlc_txid, penalty_tx=penalty.serialize())
    return kit


def seal_kit(revoked_txid: bytes, kit: tower_pb2.JusticeKit) -> tower_pb2.Appointment:
    """The appointment a tower stores for ``kit`` (protocol.driver.appointment)."""
    loc, nonce, blob = seal(revoked_txid, kit.SerializeToString())
    return tower_pb2.Appointment(locator=loc, nonce=nonce, encrypted_blob=blob)


def book_feerate(channel: Channel, commitment_number: int) -> int:
    """The feerate the channel's book gives the peer's commitment ``commitment_number``
    (after the prune that follows its revocation: the oldest one the book still has)."""
    try:
        return channel.view_of(Side.REMOTE, commitment_number).feerate_per_kw
    except (AssertionError, KeyError, ValueError):
        return channel.latest_view(Side.REMOTE).feerate_per_kw


def appointment_for_watch(channel: Channel, watch: Watch, *, destination_script_pubkey: bytes,
                          penalty_feerate_per_kw: int) -> tower_pb2.Appointment:
    """The sealed appointment for ``watch`` (a ``revoked_commitment`` Watch that
    ``channel`` just emitted): the secret from its revocation store, the revoked
    commitment's feerate from the record (from the book for an older record)."""
    if watch.commitment_number is None:
        raise ValueError("a revoked_commitment watch names its commitment number")
    secret = channel.revocations.get_commitment_secret(watch.commitment_number)
    feerate = watch.feerate_per_kw
    if feerate is None:  # a record stored before it carried the feerate
        feerate = book_feerate(channel, watch.commitment_number)
    kit = build_justice_kit(channel.static, channel.secrets, watch, secret,
                            commitment_feerate_per_kw=feerate,
                            destination_script_pubkey=destination_script_pubkey,
                            penalty_feerate_per_kw=penalty_feerate_per_kw)
    return seal_kit(watch.txid, kit)


#: Penalties are signed now and broadcast later by a tower that cannot re-sign them,
#: so they cannot be fee-bumped: they pay twice the estimate for confirmation within
#: ``PENALTY_CONF_TARGET_BLOCKS``, so that a fee spike before the breach still leaves
#: them well inside ``to_self_delay`` (the cheater's window). A penalty takes the
#: cheater's whole balance, so the extra fee is small beside what it secures.
PENALTY_CONF_TARGET_BLOCKS = 2
PENALTY_FEERATE_MULTIPLIER = 2


class TowerWatchHook:
    """What a channel party runs for each durable ``Watch`` (``DriverContext.on_watch``):
    for a ``revoked_commitment``, seal the appointment and queue it on every tower.

    ``destination_script_pubkey`` gives the script the penalties pay (a wallet
    address, so the party's wallet finds the coins); ``feerate_per_kw`` the current
    estimate (the penalty pays ``PENALTY_FEERATE_MULTIPLIER`` times it)."""

    def __init__(self, towers: Sequence[TowerClient], *,
                 destination_script_pubkey: Callable[[], bytes],
                 feerate_per_kw: Callable[[int], Awaitable[int]]) -> None:
        self.towers = list(towers)
        self._destination = destination_script_pubkey
        self._feerate = feerate_per_kw

    async def on_watch(self, driver: ChannelDriver, watch: Watch) -> None:
        if watch.kind != "revoked_commitment" or not self.towers:
            return
        feerate = await self._feerate(PENALTY_CONF_TARGET_BLOCKS)
        try:
            appointment = appointment_for_watch(
                driver.channel, watch, destination_script_pubkey=self._destination(),
                penalty_feerate_per_kw=feerate * PENALTY_FEERATE_MULTIPLIER)
        except TransactionError as exc:  # everything revocable is dust at this rate
            log.info("no appointment for %s: %s", watch.txid[::-1].hex(), exc)
            return
        for tower in self.towers:
            await tower.enqueue(appointment)


# -- delivery --------------------------------------------------------------------------


def _connect_error(exc: Exception) -> TowerError:
    if isinstance(exc, PinMismatch | HubIdentityMismatch):
        return TowerError(grpc.StatusCode.UNAUTHENTICATED, f"not the pinned tower: {exc}")
    # OSError: fetching the certificate to compare with a pinned fingerprint failed
    return TowerError(grpc.StatusCode.UNAVAILABLE, str(exc))


class Outbox:
    """Appointments not yet acknowledged by the tower: one file each in ``directory``
    (``<sequence>-<locator hex>.appointment``), oldest first. Files are written to a
    temporary name, fsynced, then renamed, so a crash leaves a whole file or none."""

    SUFFIX = ".appointment"
    REFUSED_SUFFIX = ".refused"  # one the tower will never take (too large, malformed)

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        taken = [*self.paths(), *directory.glob("*" + self.REFUSED_SUFFIX)]
        self._next = 1 + max((self._sequence(p) for p in taken), default=0)

    @staticmethod
    def _sequence(path: Path) -> int:
        return int(path.name.split("-", 1)[0])

    def paths(self) -> list[Path]:
        return sorted(self.directory.glob("*" + self.SUFFIX), key=self._sequence)

    def put(self, appointment: tower_pb2.Appointment) -> Path:
        path = self.directory / f"{self._next:012d}-{appointment.locator.hex()}{self.SUFFIX}"
        self._next += 1
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, appointment.SerializeToString())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself is durable
        finally:
            os.close(dir_fd)
        return path

    def pending(self) -> list[tuple[Path, tower_pb2.Appointment]]:
        out = []
        for path in self.paths():
            out.append((path, tower_pb2.Appointment.FromString(path.read_bytes())))
        return out

    def set_aside(self, path: Path) -> None:
        os.replace(path, path.with_suffix(self.REFUSED_SUFFIX))

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def __len__(self) -> int:
        return len(self.paths())


@dataclass(frozen=True)
class TowerQuota:
    max_appointments: int
    used_appointments: int
    max_blob_bytes: int

    @classmethod
    def from_proto(cls, quota: tower_pb2.Quota) -> TowerQuota:
        return cls(quota.max_appointments, quota.used_appointments, quota.max_blob_bytes)


class TowerClient:
    """Delivers appointments to one tower (see the module docstring)."""

    def __init__(self, bridge: GrpcBridge, target: str, *, node_secret: bytes, pin: HubPin,
                 outbox_dir: Path, expected_tower_node_id: bytes | None = None,
                 retry_seconds: float = 1.0, max_retry_seconds: float = 300.0,
                 call_timeout_seconds: float | None = 30.0) -> None:
        self.bridge, self.target, self.pin = bridge, target, pin
        self._node_secret = node_secret
        self.expected_tower_node_id = expected_tower_node_id
        self.outbox = Outbox(outbox_dir)
        self.retry_seconds, self.max_retry_seconds = retry_seconds, max_retry_seconds
        self._timeout = call_timeout_seconds
        self._transport: HubTransport | None = None
        self._wake = trio.Event()
        self.sent = 0
        self.quota: TowerQuota | None = None
        self.last_error: str | None = None

    async def enqueue(self, appointment: tower_pb2.Appointment) -> None:
        """Store ``appointment`` durably for delivery; returns once it is on disk."""
        await trio.to_thread.run_sync(self.outbox.put, appointment)
        self._wake.set()

    async def _connected(self) -> HubTransport:
        if self._transport is None:
            self._transport = await HubTransport.connect(
                self.bridge, self.target, node_secret=self._node_secret, pin=self.pin,
                expected_hub_node_id=self.expected_tower_node_id,
                call_timeout_seconds=self._timeout, stub_factory=tower_pb2_grpc.TowerStub)
            self.quota = TowerQuota.from_proto(
                await self._transport.call("Register", tower_pb2.RegisterRequest()))
        return self._transport

    async def _drop_connection(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await transport.aclose()

    async def get_info(self) -> tower_pb2.GetInfoResponse:
        try:
            transport = await self._connected()
            info: tower_pb2.GetInfoResponse = await transport.call(
                "GetInfo", tower_pb2.GetInfoRequest())
            return info
        except RpcStatusError as exc:
            await self._drop_connection()
            raise TowerError(exc.code, exc.details) from None
        except (PinMismatch, HubIdentityMismatch, OSError) as exc:
            await self._drop_connection()
            raise _connect_error(exc) from None

    async def flush(self) -> int:
        """Send every appointment of the outbox now; returns how many were sent.
        Raises ``TowerError`` (the rest stay in the outbox)."""
        sent = 0
        try:
            transport = await self._connected()
            for path, appointment in await trio.to_thread.run_sync(self.outbox.pending):
                limit = self.quota.max_blob_bytes if self.quota is not None else 0
                if limit and len(appointment.encrypted_blob) > limit:
                    await self._set_aside(path, f"{len(appointment.encrypted_blob)} bytes, "
                                                f"above the tower's {limit}")
                    continue
                try:
                    quota = await transport.call("SendAppointment", appointment)
                except RpcStatusError as exc:
                    if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    # Refused for what it is, not for now: it would block the rest.
                    await self._set_aside(path, exc.details)
                    continue
                self.quota = TowerQuota.from_proto(quota)
                await trio.to_thread.run_sync(self.outbox.remove, path)
                sent += 1
                self.sent += 1
        except RpcStatusError as exc:
            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                await self._drop_connection()
            raise TowerError(exc.code, exc.details) from None
        except (PinMismatch, HubIdentityMismatch, OSError) as exc:
            await self._drop_connection()
            raise _connect_error(exc) from None
        self.last_error = None
        return sent

    async def _set_aside(self, path: Path, why: str) -> None:
        log.error("tower %s will never take appointment %s (%s): kept as %s", self.target,
                  path.name, why, path.with_suffix(Outbox.REFUSED_SUFFIX).name)
        await trio.to_thread.run_sync(self.outbox.set_aside, path)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The service: deliver what is queued, retry with backoff, wait for more."""
        task_status.started()
        delay = self.retry_seconds
        try:
            while True:
                self._wake = trio.Event()
                try:
                    await self.flush()
                    delay = self.retry_seconds
                    await self._wake.wait()
                except TowerError as exc:
                    self.last_error = str(exc)
                    log.warning("%s; %d appointment(s) kept, retrying in %ss", exc,
                                len(self.outbox), delay)
                    with trio.move_on_after(delay):
                        await self._wake.wait()
                    delay = min(delay * 2, self.max_retry_seconds)
        finally:
            await self._drop_connection()

    async def aclose(self) -> None:
        await self._drop_connection()


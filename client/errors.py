"""Every error the Chanhub SDK raises: one tree, mapped in one place.

    ChanhubError
    ├── HubConnectionError            the hub cannot be reached or the link dropped
    │   ├── HubUnavailable            UNAVAILABLE / DEADLINE_EXCEEDED
    │   └── HubIdentityError          wrong TLS certificate pin or wrong hub node id
    ├── AuthenticationError           UNAUTHENTICATED: the key proof or session was refused
    ├── PermissionDenied              PERMISSION_DENIED: not this client's channel/payment
    ├── InvalidRequest                INVALID_ARGUMENT / OUT_OF_RANGE / a bad local argument
    │   └── InvoiceError              malformed, badly signed, wrong network, expired
    ├── NotFound                      NOT_FOUND: no such channel, payment, invoice or order
    ├── InsufficientBalance           the channel cannot carry the amount plus the fee
    ├── NoChannel                     no open channel to the hub to pay or receive through
    ├── AlreadyPaid                   this client already paid (or is paying) this invoice
    ├── IdempotencyConflict           the key was used for a different payment
    ├── RefundExceedsReceived         refunds would total more than the payment received
    ├── RefundDestinationUnknown      the payment does not say who paid it: name the payer
    ├── FeeAboveMaximum               the hub's fee for the amount exceeds the payer's max_fee_msat
    ├── PaymentFailed                 the hub or the payee failed the HTLC (``report``)
    │   ├── PayeeOffline
    │   ├── NoLiquidity
    │   ├── PaymentRefused            the payee refused (details, expired, already paid)
    │   └── PaymentTimedOut
    ├── StoreLocked                   another process holds this client's store
    ├── WrongPassphrase               the store's key does not open it
    ├── HubRefused                    FAILED_PRECONDITION / RESOURCE_EXHAUSTED / ALREADY_EXISTS
    └── InternalError                 INTERNAL / UNKNOWN and anything unexpected

``from_status`` (gRPC status codes), ``from_failure`` (the hub's or payee's signed
failure reasons) and ``translate`` (a context manager turning the lower layers'
exceptions into these) are the only places where anything is mapped, so the CLI prints
one clear line for any of them (``str(error)``). ``status_of`` is the other direction:
the gRPC status the ``Client`` service (proto/client.proto) answers for each error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from client import invoices as _invoices
from protocol.driver import crypto as _crypto
from protocol.driver import db as _db
from protocol.driver.grpc_bridge import RpcStatusError
from protocol.routing import FailureCode, FailureReport


class ChanhubError(Exception):
    """Base of every error the SDK raises."""


class HubConnectionError(ChanhubError):
    pass


class HubUnavailable(HubConnectionError):
    pass


class HubIdentityError(HubConnectionError):
    pass


class AuthenticationError(ChanhubError):
    pass


class PermissionDenied(ChanhubError):
    pass


class InvalidRequest(ChanhubError):
    pass


class InvoiceError(InvalidRequest):
    pass


class NotFound(ChanhubError):
    pass


class InsufficientBalance(ChanhubError):
    pass


class NoChannel(ChanhubError):
    pass


class AlreadyPaid(ChanhubError):
    pass


class IdempotencyConflict(ChanhubError):
    pass


class RefundExceedsReceived(ChanhubError):
    pass


class RefundDestinationUnknown(ChanhubError):
    """A refund of a payment whose packet did not state the payer's node id (an older
    payer, or received before payers stated it): the caller must name the destination."""


class FeeAboveMaximum(ChanhubError):
    """The hub's fee for this amount (base + ppm, from the hub's terms) is above the
    payer's ``max_fee_msat``: refused before any HTLC is offered, nothing recorded."""

    def __init__(self, message: str, *, fee_msat: int, max_fee_msat: int) -> None:
        super().__init__(message)
        self.fee_msat, self.max_fee_msat = fee_msat, max_fee_msat


class PaymentFailed(ChanhubError):
    """The payment failed; ``report`` is the authenticated reason (None: failed
    locally, e.g. the HTLC was reverted by a restart before it left)."""

    def __init__(self, message: str, report: FailureReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class PayeeOffline(PaymentFailed):
    pass


class NoLiquidity(PaymentFailed):
    pass


class PaymentRefused(PaymentFailed):
    pass


class PaymentTimedOut(PaymentFailed):
    pass


class StoreLocked(ChanhubError):
    pass


class WrongPassphrase(ChanhubError):
    pass


class HubRefused(ChanhubError):
    pass


class InternalError(ChanhubError):
    pass


_BY_STATUS: dict[grpc.StatusCode, type[ChanhubError]] = {
    grpc.StatusCode.UNAVAILABLE: HubUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: HubUnavailable,
    grpc.StatusCode.CANCELLED: HubUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: HubRefused,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HubRefused,
    grpc.StatusCode.ALREADY_EXISTS: HubRefused,
    grpc.StatusCode.ABORTED: HubRefused,
}

_BY_FAILURE: dict[FailureCode, type[PaymentFailed]] = {
    FailureCode.PAYEE_OFFLINE: PayeeOffline,
    FailureCode.INSUFFICIENT_CAPACITY: NoLiquidity,
    FailureCode.TEMPORARY_FAILURE: PaymentTimedOut,
    FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS: PaymentRefused,
    FailureCode.INVOICE_EXPIRED: PaymentRefused,
    FailureCode.ALREADY_PAID: PaymentRefused,
    FailureCode.FINAL_INCORRECT_CLTV_EXPIRY: PaymentRefused,
    FailureCode.FINAL_INCORRECT_HTLC_AMOUNT: PaymentRefused,
}


# The status the Client service answers with for each error (the nearest class in its
# MRO): the other direction of _BY_STATUS. A refusal because of the state of the
# channel, the hub's terms or a payment is FAILED_PRECONDITION; of the request itself,
# INVALID_ARGUMENT.
_STATUS_OF: dict[type[ChanhubError], grpc.StatusCode] = {
    HubConnectionError: grpc.StatusCode.UNAVAILABLE,
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    InsufficientBalance: grpc.StatusCode.FAILED_PRECONDITION,
    NoChannel: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyPaid: grpc.StatusCode.ALREADY_EXISTS,
    IdempotencyConflict: grpc.StatusCode.ALREADY_EXISTS,
    RefundExceedsReceived: grpc.StatusCode.OUT_OF_RANGE,
    RefundDestinationUnknown: grpc.StatusCode.FAILED_PRECONDITION,
    FeeAboveMaximum: grpc.StatusCode.FAILED_PRECONDITION,
    PaymentFailed: grpc.StatusCode.ABORTED,
    StoreLocked: grpc.StatusCode.UNAVAILABLE,
    WrongPassphrase: grpc.StatusCode.UNAUTHENTICATED,
    HubRefused: grpc.StatusCode.FAILED_PRECONDITION,
    InternalError: grpc.StatusCode.INTERNAL,
}


def status_of(error: ChanhubError) -> grpc.StatusCode:
    """The gRPC status the ``Client`` service answers for ``error``."""
    for cls in type(error).__mro__:
        if cls in _STATUS_OF:
            return _STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def from_status(error: RpcStatusError) -> ChanhubError:
    """The ``ChanhubError`` for a non-OK gRPC status."""
    cls = _BY_STATUS.get(error.code, InternalError)
    # gRPC reports a certificate that is not the pinned one as UNAVAILABLE; only its
    # details tell a wrong hub (or a man in the middle) from a hub that is down.
    if error.code is grpc.StatusCode.UNAVAILABLE and "CERTIFICATE_VERIFY_FAILED" in error.details:
        return HubIdentityError(f"hub identity: its TLS certificate is not the pinned one "
                                f"({error.details})")
    return cls(f"hub: {error.code.name.lower()}: {error.details}")


def from_failure(report: FailureReport) -> PaymentFailed:
    """The ``PaymentFailed`` subclass for an authenticated failure reason."""
    cls = _BY_FAILURE.get(report.failure.code, PaymentFailed)
    return cls(f"payment failed: {report.describe()}", report)


def from_failure_code(code: FailureCode, message: str) -> PaymentFailed:
    """The ``PaymentFailed`` subclass for a stored failure code and its message."""
    return _BY_FAILURE.get(code, PaymentFailed)(f"payment failed: {message}")


@contextmanager
def translate() -> Iterator[None]:
    """Run a block, re-raising the lower layers' errors as ``ChanhubError``s."""
    from client.transport import HubIdentityMismatch
    from protocol.driver.wire_auth import PinMismatch

    try:
        yield
    except ChanhubError:
        raise
    except RpcStatusError as exc:
        raise from_status(exc) from exc
    except (PinMismatch, HubIdentityMismatch) as exc:
        raise HubIdentityError(f"hub identity: {exc}") from exc
    except _db.StoreLocked as exc:
        raise StoreLocked(str(exc)) from exc
    except _crypto.WrongKey as exc:
        raise WrongPassphrase("the passphrase does not open this client's store") from exc
    except _invoices.InvoiceError as exc:
        raise InvoiceError(f"invoice: {exc}") from exc

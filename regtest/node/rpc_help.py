"""Each RPC's arguments as Core's RPCHelpMan declares them: help text and type checks.

Core declares every method's arguments (name, type, optional or not) once,
and derives three behaviours from that declaration, which the dispatcher
here reproduces:

- `help METHOD`, and the -1 error for a wrong number of arguments, give the
  method's help text: the signature line (string arguments quoted, the
  optional ones in one pair of parentheses), a summary, and the numbered
  `Arguments:` list with each argument's type and default;
- before the handler runs, each argument given is checked against its
  declared JSON type, and every mismatch is listed in one -3 error,
  `Wrong type passed:\\n{\\n    "Position 1 (height)": "JSON value of type
  string is not of expected type number"\\n}` (Core's RPCArg::MatchesType;
  amounts accept a number or a string and are checked by the handler, as
  are arguments Core declares with skip_type_check);
- `help` alone lists the signatures by category.

The summaries are shorter than Core's and the `Result:`/`Examples:` sections
are left out; the signature line, the argument list and the error texts
follow Core's format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Core's RPCArg types by what they accept: the JSON type checked before the
# call (None: checked by the handler) and how help prints the type
_TYPES: dict[str, tuple[str | None, str]] = {
    "str": ("string", "string"),
    "hex": ("string", "string"),
    "num": ("number", "numeric"),
    "bool": ("bool", "boolean"),
    "arr": ("array", "json array"),
    "obj": ("object", "json object"),
    "amount": (None, "numeric or string"),
    "any": (None, "numeric"),  # declared with skip_type_check
}


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    kind: str  # a key of _TYPES
    description: str
    default: str | None = None  # None: required; "" : optional without a default shown
    sig: str | None = None  # how the signature line writes it, when not the name

    @property
    def required(self) -> bool:
        return self.default is None

    def signature(self) -> str:
        if self.sig is not None:
            return self.sig
        return f'"{self.name}"' if self.kind in ("str", "hex") else self.name


@dataclass(frozen=True, slots=True)
class MethodHelp:
    category: str
    summary: str
    args: tuple[Arg, ...]

    def signature(self, name: str) -> str:
        required = [a.signature() for a in self.args if a.required]
        optional = [a.signature() for a in self.args if not a.required]
        parts = [name, *required]
        if optional:
            parts.append("( " + " ".join(optional) + " )")
        return " ".join(parts)

    def text(self, name: str) -> str:
        lines = [self.signature(name), "", self.summary]
        if self.args:
            lines += ["", "Arguments:"]
            # Core aligns the descriptions 4 spaces past the longest "n. name"
            width = max(len(f"{n}. {a.name}") for n, a in enumerate(self.args, 1)) + 4
            for n, arg in enumerate(self.args, 1):
                kind = _TYPES[arg.kind][1]
                if arg.required:
                    how = "required"
                elif arg.default:
                    how = f"optional, default={arg.default}"
                else:
                    how = "optional"
                left = f"{n}. {arg.name}"
                lines.append(f"{left.ljust(width)}({kind}, {how}) {arg.description}".rstrip())
        return "\n".join(lines) + "\n"

    def num_args_valid(self, count: int) -> bool:
        """Core's IsValidNumArgs: at least the required ones, at most all."""
        return sum(a.required for a in self.args) <= count <= len(self.args)

    def type_errors(self, params: list[Any]) -> str | None:
        """Core's -3 message for the arguments of the wrong JSON type, or None."""
        from regtest.node.rpc_methods import json_type

        mismatches: dict[str, str] = {}
        for n, (arg, value) in enumerate(zip(self.args, params, strict=False), 1):
            expected = _TYPES[arg.kind][0]
            if expected is None or (value is None and not arg.required):
                continue
            got = json_type(value)
            if got != expected:
                mismatches[f"Position {n} ({arg.name})"] = (
                    f"JSON value of type {got} is not of expected type {expected}"
                )
        if not mismatches:
            return None
        return "Wrong type passed:\n" + json.dumps(mismatches, indent=4)


def _m(category: str, summary: str, *args: Arg) -> MethodHelp:
    return MethodHelp(category, summary, args)


_TX_HEX = "The hex string of the raw transaction"
_MAX_FEE = "Reject transactions whose fee rate is higher than the specified value, in BTC/kvB."

HELP: dict[str, MethodHelp] = {
    "getblockchaininfo": _m(
        "Blockchain", "Returns an object containing various state info regarding blockchain "
        "processing."
    ),
    "getblockcount": _m(
        "Blockchain", "Returns the height of the most-work fully-validated chain.\n"
        "The genesis block has height 0."
    ),
    "getbestblockhash": _m(
        "Blockchain", "Returns the hash of the best (tip) block in the most-work "
        "fully-validated chain."
    ),
    "getblockhash": _m(
        "Blockchain", "Returns hash of block in best-block-chain at height provided.",
        Arg("height", "num", "The height index"),
    ),
    "getblockheader": _m(
        "Blockchain", "If verbose is false, returns a string that is serialized, hex-encoded "
        "data for blockheader 'hash'.\nIf verbose is true, returns an Object with information "
        "about blockheader <hash>.",
        Arg("blockhash", "hex", "The block hash"),
        Arg("verbose", "bool", "true for a json object, false for the hex-encoded data", "true"),
    ),
    "getblock": _m(
        "Blockchain", "If verbosity is 0, returns a string that is serialized, hex-encoded "
        "data for block 'hash'.\nIf verbosity is 1, returns an Object with information about "
        "block <hash>.\nIf verbosity is 2, returns an Object with information about block "
        "<hash> and information about each transaction.",
        Arg("blockhash", "hex", "The block hash"),
        Arg("verbosity", "any", "0 for hex-encoded data, 1 for a JSON object, 2 for JSON "
            "object with transaction data", "1"),
    ),
    "invalidateblock": _m(
        "Blockchain", "Permanently marks a block as invalid, as if it violated a consensus "
        "rule.", Arg("blockhash", "hex", "the hash of the block to mark as invalid"),
    ),
    "reconsiderblock": _m(
        "Blockchain", "Removes invalidity status of a block, its ancestors and its "
        "descendants, reconsider them for activation.\nThis can be used to undo the effects "
        "of invalidateblock.", Arg("blockhash", "hex", "the hash of the block to reconsider"),
    ),
    "gettxout": _m(
        "Blockchain", "Returns details about an unspent transaction output.",
        Arg("txid", "hex", "The transaction id"),
        Arg("n", "num", "vout number"),
        Arg("include_mempool", "bool", "Whether to include the mempool. Note that an unspent "
            "output that is spent in the mempool won't appear.", "true"),
    ),
    "getrawmempool": _m(
        "Blockchain", "Returns all transaction ids in memory pool as a json array of string "
        "transaction ids.",
        Arg("verbose", "bool", "True for a json object, false for array of transaction ids",
            "false"),
        Arg("mempool_sequence", "bool", "If verbose=false, returns a json object with "
            "transaction list and mempool sequence number attached.", "false"),
    ),
    "getmempoolentry": _m(
        "Blockchain", "Returns mempool data for given transaction",
        Arg("txid", "hex", "The transaction id (must be in mempool)"),
    ),
    "generatetoaddress": _m(
        "Generating", "Mine to a specified address and return the block hashes.",
        Arg("nblocks", "num", "How many blocks are generated."),
        Arg("address", "str", "The address to send the newly generated bitcoin to."),
        Arg("maxtries", "num", "How many iterations to try.", "1000000"),
    ),
    "generateblock": _m(
        "Generating", "Mine a set of ordered transactions to a specified address or "
        "descriptor and return the block hash.",
        Arg("output", "str", "The address or descriptor to send the newly generated bitcoin "
            "to."),
        Arg("transactions", "arr", "An array of hex strings which are either txids or raw "
            "transactions.", sig='["rawtx/txid",...]'),
        Arg("submit", "bool", "Whether to submit the block before the RPC call returns or to "
            "return it as hex.", "true"),
    ),
    "estimatesmartfee": _m(
        "Util", "Estimates the approximate fee per kilobyte needed for a transaction to begin "
        "confirmation within conf_target blocks if possible and return the number of blocks "
        "for which the estimate is valid.",
        Arg("conf_target", "num", "Confirmation target in blocks (1 - 1008)"),
        Arg("estimate_mode", "str", "The fee estimate mode.", '"economical"'),
    ),
    "getrawtransaction": _m(
        "Rawtransactions", "By default, this call only returns a transaction if it is in the "
        "mempool. If -txindex is enabled and no blockhash argument is passed, it will return "
        "the transaction if it is in the mempool or any block.",
        Arg("txid", "hex", "The transaction id"),
        Arg("verbosity", "any", "0 for hex-encoded data, 1 for a JSON object, and 2 for JSON "
            "object with fee and prevout", "0"),
        Arg("blockhash", "hex", "The block in which to look for the transaction", ""),
    ),
    "decoderawtransaction": _m(
        "Rawtransactions", "Return a JSON object representing the serialized, hex-encoded "
        "transaction.",
        Arg("hexstring", "hex", "The transaction hex string"),
        Arg("iswitness", "bool", "Whether the transaction hex is a serialized witness "
            "transaction.", "depends on heuristic tests"),
    ),
    "sendrawtransaction": _m(
        "Rawtransactions", "Submit a raw transaction (serialized, hex-encoded) to local node "
        "and network.",
        Arg("hexstring", "hex", _TX_HEX),
        Arg("maxfeerate", "amount", _MAX_FEE, '"0.10"'),
        Arg("maxburnamount", "amount", "Reject transactions with provably unspendable outputs "
            "(e.g. 'datacarrier' outputs that use the OP_RETURN opcode) greater than the "
            "specified value, expressed in BTC.", '"0.00"'),
    ),
    "testmempoolaccept": _m(
        "Rawtransactions", "Returns result of mempool acceptance tests indicating if raw "
        "transaction(s) (serialized, hex-encoded) would be accepted by mempool.",
        Arg("rawtxs", "arr", "An array of hex strings of raw transactions.",
            sig='["rawtx",...]'),
        Arg("maxfeerate", "amount", _MAX_FEE, '"0.10"'),
    ),
    "getnewaddress": _m(
        "Wallet", "Returns a new Bitcoin address for receiving payments.",
        Arg("label", "str", "The label name for the address to be linked to.", '""'),
        Arg("address_type", "str", 'The address type to use. Options are "legacy", '
            '"p2sh-segwit", "bech32", and "bech32m".', 'set by -addresstype'),
    ),
    "getbalance": _m(
        "Wallet", "Returns the total available balance.",
        Arg("dummy", "str", 'Remains for backward compatibility. Must be excluded or set to '
            '"*".', ""),
        Arg("minconf", "num", "Only include transactions confirmed at least this many times.",
            "0"),
        Arg("include_watchonly", "bool", "Also include balance in watch-only addresses",
            "true for watch-only wallets, otherwise false"),
        Arg("avoid_reuse", "bool", "Do not include balance in dirty outputs", "true"),
    ),
    "listunspent": _m(
        "Wallet", "Returns array of unspent transaction outputs\nwith between minconf and "
        "maxconf (inclusive) confirmations.",
        Arg("minconf", "num", "The minimum confirmations to filter", "1"),
        Arg("maxconf", "num", "The maximum confirmations to filter", "9999999"),
        Arg("addresses", "arr", "The bitcoin addresses to filter", "[]",
            sig='["address",...]'),
        Arg("include_unsafe", "bool", "Include outputs that are not safe to spend", "true"),
        Arg("query_options", "obj", "", ""),
    ),
    "sendtoaddress": _m(
        "Wallet", "Send an amount to a given address.",
        Arg("address", "str", "The bitcoin address to send to."),
        Arg("amount", "amount", "The amount in BTC to send. eg 0.1", sig="amount"),
        Arg("comment", "str", "A comment used to store what the transaction is for.", ""),
        Arg("comment_to", "str", "A comment to store the name of the person or organization "
            "to which you're sending the transaction.", ""),
        Arg("subtractfeefromamount", "bool", "The fee will be deducted from the amount being "
            "sent.", "false"),
        Arg("replaceable", "bool", "Signal that this transaction can be replaced by a "
            "transaction (BIP 125)", "wallet default"),
        Arg("conf_target", "num", "Confirmation target in blocks", "wallet -txconfirmtarget"),
        Arg("estimate_mode", "str", "The fee estimate mode", '"unset"'),
        Arg("avoid_reuse", "bool", "Avoid spending from dirty addresses", "true"),
        Arg("fee_rate", "amount", "Specify a fee rate in sat/vB.", "not set", sig="fee_rate"),
        Arg("verbose", "bool", "If true, return extra information about the transaction.",
            "false"),
    ),
    "uptime": _m("Control", "Returns the total uptime of the server."),
    "stop": _m("Control", "Request a graceful shutdown of Bitcoin Core."),
    "help": _m(
        "Control", "List all commands, or get help for a specified command.",
        Arg("command", "str", "The command to get help on", "all commands"),
    ),
}


def command_list() -> str:
    """`help` without a command: signatures grouped by category, as Core lists them."""
    categories: dict[str, list[str]] = {}
    for name in sorted(HELP):
        categories.setdefault(HELP[name].category, []).append(HELP[name].signature(name))
    blocks = [f"== {category} ==\n" + "\n".join(lines) for category, lines in
              sorted(categories.items())]
    return "\n\n".join(blocks)

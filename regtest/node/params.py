"""Regtest consensus and policy parameters, and the few helpers that read them.

Everything here is a fact about `bitcoind -regtest` (Bitcoin Core 28, the
version this node imitates; see shared/reference/bitcoind-rpc.md §4): the
genesis block, proof-of-work limit, subsidy schedule, maturity, the script
verification flags Core uses for blocks and for its mempool, and the relay
policy numbers.  Every buried deployment (BIP34, BIP65, BIP66, CSV) is active
from height 1 and segwit and taproot always, so one set of block flags serves
the whole chain after genesis.

Amounts are integer satoshi everywhere inside the node; `btc` and
`sat_from_btc` are the only two crossings to the `Decimal` BTC values the RPC
boundary speaks.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal, InvalidOperation

from btclib.script.engine.flags import ScriptFlag

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN

GENESIS_HASH = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
# regtest's powLimit; every block carries these bits (no retargeting)
POW_LIMIT_BITS = bytes.fromhex("207fffff")
POW_TARGET = 0x7FFFFF << (8 * (0x20 - 3))
# work of one block at POW_TARGET: 2**256 // (target + 1)
BLOCK_WORK = (1 << 256) // (POW_TARGET + 1)

SUBSIDY_HALVING_INTERVAL = 150
COINBASE_MATURITY = 100
# the wallet counts a coinbase as spendable one block later than consensus
WALLET_COINBASE_MATURITY = 101
MEDIAN_TIME_SPAN = 11
MAX_FUTURE_BLOCK_TIME = 2 * 60 * 60
MAX_BLOCK_WEIGHT = 4_000_000
MAX_BLOCK_SIGOPS_COST = 80_000
WITNESS_SCALE_FACTOR = 4
LOCKTIME_THRESHOLD = 500_000_000
SEQUENCE_FINAL = 0xFFFFFFFF
BLOCK_VERSION = 0x20000000

# relay policy (Core defaults, which regtest keeps)
MIN_RELAY_FEE_SAT_PER_KVB = 1000
# what a replacement must add on its own size (-incrementalrelayfee)
INCREMENTAL_RELAY_FEE_SAT_PER_KVB = 1000
DUST_RELAY_FEE_SAT_PER_KVB = 3000
MAX_STANDARD_TX_WEIGHT = 400_000
MIN_STANDARD_TX_NONWITNESS_SIZE = 65
MAX_STANDARD_TX_SIGOPS_COST = MAX_BLOCK_SIGOPS_COST // 5
MAX_OP_RETURN_RELAY = 83
ANCESTOR_LIMIT = 25
DESCENDANT_LIMIT = 25
ANCESTOR_SIZE_LIMIT_VB = 101_000
DESCENDANT_SIZE_LIMIT_VB = 101_000
DEFAULT_MAX_FEE_RATE_SAT_PER_KVB = 10_000_000  # 0.10 BTC/kvB
# The wallet's fee rate: Core's functional tests configure fallbackfee=0.0002
# BTC/kvB, and a fixed rate keeps the faucet deterministic.
WALLET_FEE_RATE_SAT_PER_KVB = 20_000

# Core's MANDATORY_SCRIPT_VERIFY_FLAGS: what a block is held to once every
# soft fork is active (regtest: from height 1).
BLOCK_SCRIPT_FLAGS = (
    ScriptFlag.P2SH
    | ScriptFlag.DERSIG
    | ScriptFlag.NULLDUMMY
    | ScriptFlag.CHECKLOCKTIMEVERIFY
    | ScriptFlag.CHECKSEQUENCEVERIFY
    | ScriptFlag.WITNESS
    | ScriptFlag.TAPROOT
)

# Core's STANDARD_SCRIPT_VERIFY_FLAGS (policy/policy.h, v28): the mandatory
# set plus the relay-only rules.
STANDARD_SCRIPT_FLAGS = (
    BLOCK_SCRIPT_FLAGS
    | ScriptFlag.STRICTENC
    | ScriptFlag.MINIMALDATA
    | ScriptFlag.DISCOURAGE_UPGRADABLE_NOPS
    | ScriptFlag.CLEANSTACK
    | ScriptFlag.MINIMALIF
    | ScriptFlag.NULLFAIL
    | ScriptFlag.LOW_S
    | ScriptFlag.DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM
    | ScriptFlag.WITNESS_PUBKEYTYPE
    | ScriptFlag.CONST_SCRIPTCODE
    | ScriptFlag.DISCOURAGE_UPGRADABLE_TAPROOT_VERSION
    | ScriptFlag.DISCOURAGE_OP_SUCCESS
    | ScriptFlag.DISCOURAGE_UPGRADABLE_PUBKEYTYPE
)


def block_subsidy(height: int) -> int:
    """Return the coinbase subsidy at `height` in satoshi (Core's GetBlockSubsidy)."""
    halvings = height // SUBSIDY_HALVING_INTERVAL
    if halvings >= 64:
        return 0
    return (50 * COIN) >> halvings


_EIGHT_PLACES = Decimal("0.00000001")


def btc(amount_sat: int) -> Decimal:
    """Return satoshi as a BTC Decimal with exactly 8 places, as bitcoind prints."""
    return (Decimal(amount_sat) / COIN).quantize(_EIGHT_PLACES)


def sat_from_btc(value: object) -> int:
    """Parse an RPC amount (number or string) to satoshi, as Core's AmountFromValue.

    Raises ValueError with Core's message text; the caller turns it into -3.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError("Amount is not a number or string")
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise ValueError("Invalid amount") from exc
    if not amount.is_finite():
        raise ValueError("Invalid amount")
    scaled = amount * COIN
    if scaled != scaled.to_integral_value(rounding=ROUND_DOWN):
        raise ValueError("Invalid amount")
    sat = int(scaled)
    if sat < 0 or sat > MAX_MONEY:
        raise ValueError("Amount out of range")
    return sat


def format_money(amount_sat: int) -> str:
    """Core's FormatMoney: 8 places with trailing zeros trimmed to at least 2."""
    sign = "-" if amount_sat < 0 else ""
    whole, frac = divmod(abs(amount_sat), COIN)
    text = f"{frac:08d}".rstrip("0")
    return f"{sign}{whole}.{text.ljust(2, '0')}"

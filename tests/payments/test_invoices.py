"""client/invoices.py: our regtest invoices, BOLT #11's own examples (lightning/bolts
11-payment-encoding.md, signed with its ``priv_key``), and a barrage of malformed strings
(only InvoiceError, never anything else)."""

from __future__ import annotations

import contextlib
import hashlib

import bech32
import bolt11
import pytest
from bolt11.models.features import FeatureExtra, Features, FeatureState
from bolt11.models.tags import Tag, TagChar, Tags
from hypothesis import given
from hypothesis import strategies as st

from client.invoices import (
    DEFAULT_INVOICE_EXPIRY_SECONDS,
    DEFAULT_MIN_FINAL_CLTV_EXPIRY_BLOCKS,
    InvoiceError,
    create_invoice,
    decode_invoice,
    parse_invoice,
)
from tests.payments.keys import PAYEE_ID, PAYEE_SECRET, PAYMENT_HASH, PAYMENT_SECRET

NOW = 1_700_000_000
SPEC_PAYEE = bytes.fromhex("03e7156ae33b0a208d0744199163177e909e80176e55d97a2f221ede0f934dd9ad")
SPEC_HASH = bytes.fromhex("0001020304050607080900010203040506070809000102030405060708090102")
SPEC_TIMESTAMP = 1496314658

# BOLT #11 "Please send $30 for coffee beans ... features 9, 15 and 99, using secret 0x11..".
COFFEE = ("lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxy"
          "etpdeessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q5sqqqqqqqqqqqqqqqpqsq67g"
          "ye39hfg3zd8rgc80k32tvy9xk2xunwm5lzexnvpx6fd77en8qaq424dxgt56cag2dpt359k3ssyhetktkpqh24jq"
          "njyw6uqd08sgptq44qu")
# "Same, but including fields which must be ignored."
# Built from the spec's breakdown of each field (every unknown or wrong-length field a
# reader must skip), so a slip in transcription fails the Bech32 checksum.
COFFEE_IGNORED_FIELDS = (
    "lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyetpdee"
    "ssp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q5sqqqqqqqqqqqqqqqpqsq"
    "2qrqqq" + "fppn" + "q" * 32 + "ppn" + "q" * 51 + "pp4" + "q" * 53 + "hpn" + "q" * 51
    + "hp4" + "q" * 53 + "spn" + "q" * 51 + "sp4" + "q" * 53 + "np5" + "q" * 52
    + "npk" + "q" * 54
    + "2jxxfsnucm4jf4zwtznpaxphce606fvhvje5x7d4gw7n73994hgs7nteqvenq8a4ml8aqtchv5d9pf7l558889h"
    "p4yyrqv6a7zpq9fgp" + "skqhza")
# The first (legacy) examples have no ``s`` field: no payment secret.
LEGACY_DONATION = (
    "lnbc1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kge"
    "tjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaq8rkx3yf5tcsyz3d73gafnh3cax9rn449d9p5uxz9ezhhypd0elx8"
    "7sjle52x86fux2ypatgddc6k63n7erqz25le42c4u4ecky03ylcqca784w")
LEGACY_COFFEE_60S = (
    "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4"
    "jsxqzpuaztrnwngzn3kdzw5hydlzf03qdgm2hdq27cqv3agm2awhz5se903vruatfhq77w3ls4evs3ch9zw97j25emud"
    "upq63nyw24cg27h2rspfj9srp")
LEGACY_TESTNET = (
    "lntb20m1pvjluezhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsy"
    "qcyq5rqwzqfqqqsyqcyq5rqwzqfqypqfpp3x9et2e20v6pu37c5d9vax37wxq72un98kmzzhznpurw9sgl2v0nklu2g4d"
    "0keph5t7tj9tcqd8rexnd07ux4uv2cjvcqwaxgj7v4uwn5wmypjd5n69z2xm3xgksg28nwht7f6zspwp3f9t")
# "Examples of Invalid Invoices"
INVALID = {
    "unknown even feature 100": (
        "lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyetpd"
        "eessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q4psqqqqqqqqqqqqqqqpqsqq40wa3kh"
        "l49yue3zsgm26jrepqr2eghqlx86rttutve3ugd05em86nsefzh4pfurpd9ek9w2vp95zxqnfe2u7ckudyahsa52q6"
        "6tgzcp6t2dyk"),
    "bad checksum": (
        "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrs"
        "we78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4"
        "cusd45tftc9c5fh0nnqpnl2jfll544esqchsrnt"),
    "no separator": (
        "pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyq"
        "c7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4cusd45tft"
        "c9c5fh0nnqpnl2jfll544esqchsrny"),
    "mixed case": (
        "LNBC2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrs"
        "we78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4"
        "cusd45tftc9c5fh0nnqpnl2jfll544esqchsrny"),
    "signature not recoverable": (
        "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enx"
        "v4jsxqzpuaxtrnwngzn3kdzw5hydlzf03qdgm2hdq27cqv3agm2awhz5se903vruatfhq77w3ls4evs3ch9zw97j25e"
        "mudupq63nyw24cg27h2rspk28uwq"),
    "too short": (
        "lnbc1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kg"
        "etjypeh2ursdae8g6na6hlh"),
    "invalid multiplier": (
        "lnbc2500x1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enx"
        "v4jsxqzpujr6jxr9gq9pv6g46y7d20jfkegkg4gljz2ea2a3m9lmvvr95tq2s0kvu70u3axgelz3kyvtp2ywwt0y8hk"
        "x2869zq5dll9nelr83zzqqpgl2zg"),
    "sub-millisatoshi precision": (
        "lnbc2500000001p1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp"
        "3k7enxv4jsxqzpu7hqtk93pkf7sw55rdv4k9z2vj050rxdr6za9ekfs3nlt5lr89jqpdmxsmlj9urqumg0h9wzpqecw"
        "7th56tdms40p2ny9q4ddvjsedzcplva53s"),
}


# -- the spec's examples ---------------------------------------------------------------------

@pytest.mark.parametrize("text", [COFFEE, COFFEE.upper(), COFFEE_IGNORED_FIELDS],
                         ids=["lower", "upper", "ignored-fields"])
def test_spec_coffee_beans_fields(text: str) -> None:
    invoice = parse_invoice(text)
    assert invoice.network == "bc"
    assert invoice.amount_msat == 2_500_000_000  # 25m BTC
    assert invoice.created_at == SPEC_TIMESTAMP
    assert invoice.payment_hash == SPEC_HASH
    assert invoice.payment_secret == b"\x11" * 32
    assert invoice.description == "coffee beans"
    assert invoice.description_hash is None
    assert invoice.payee_node_id == SPEC_PAYEE  # recovered from the signature
    assert invoice.expiry_seconds == DEFAULT_INVOICE_EXPIRY_SECONDS  # no x field
    assert invoice.min_final_cltv_expiry_blocks == 18  # no c field: BOLT #11's default
    assert invoice.features == (1 << 9) | (1 << 15) | (1 << 99)  # all odd: acceptable
    assert invoice.expires_at == SPEC_TIMESTAMP + 3600


@pytest.mark.parametrize("text", [COFFEE, COFFEE_IGNORED_FIELDS, LEGACY_COFFEE_60S])
def test_our_decoder_refuses_mainnet(text: str) -> None:
    with pytest.raises(InvoiceError, match=r"network|secret"):
        decode_invoice(text, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("text", [LEGACY_DONATION, LEGACY_COFFEE_60S, LEGACY_TESTNET])
def test_legacy_examples_without_payment_secret_are_refused(text: str) -> None:
    # The bolt11 package still reads their fields as the spec's breakdown says...
    decoded = bolt11.decode(text, ignore_exceptions=True)
    assert decoded.date == SPEC_TIMESTAMP and decoded.payee == SPEC_PAYEE.hex()
    # ...but we pay only invoices with a payment secret (the hub must not probe).
    with pytest.raises(InvoiceError, match="secret"):
        parse_invoice(text)


def test_legacy_coffee_fields_per_the_spec() -> None:
    decoded = bolt11.decode(LEGACY_COFFEE_60S, ignore_exceptions=True)
    assert decoded.amount_msat == 250_000_000  # 2500u
    assert decoded.description == "1 cup coffee" and decoded.expiry == 60


def test_testnet_example_is_refused_as_testnet() -> None:
    with pytest.raises(InvoiceError):
        decode_invoice(LEGACY_TESTNET, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("name", list(INVALID))
def test_spec_invalid_examples(name: str) -> None:
    with pytest.raises(InvoiceError):
        parse_invoice(INVALID[name])


def test_sub_millisatoshi_is_refused_by_us_not_just_by_luck() -> None:
    with pytest.raises(InvoiceError, match="sub-millisatoshi"):
        parse_invoice(INVALID["sub-millisatoshi precision"])
    with pytest.raises(InvoiceError, match="unknown features"):
        parse_invoice(INVALID["unknown even feature 100"])
    with pytest.raises(InvoiceError, match="mixed-case"):
        parse_invoice(INVALID["mixed case"])


# -- ours ------------------------------------------------------------------------------------

def _ours(**kwargs: object) -> str:
    args: dict[str, object] = {
        "node_secret": PAYEE_SECRET, "payment_hash": PAYMENT_HASH,
        "payment_secret": PAYMENT_SECRET, "amount_msat": 150_000, "description": "a coffee",
        "now": NOW}
    args.update(kwargs)
    return create_invoice(**args).bolt11  # type: ignore[arg-type]


def test_round_trip() -> None:
    text = _ours(expiry_seconds=600, min_final_cltv_expiry_blocks=24)
    assert text.startswith("lnbcrt")
    invoice = decode_invoice(text, now=NOW + 599)
    assert (invoice.network, invoice.payee_node_id, invoice.payment_hash, invoice.payment_secret,
            invoice.amount_msat, invoice.description, invoice.created_at,
            invoice.expiry_seconds, invoice.min_final_cltv_expiry_blocks) == (
        "bcrt", PAYEE_ID, PAYMENT_HASH, PAYMENT_SECRET, 150_000, "a coffee", NOW, 600, 24)
    assert invoice.features == (1 << 8) | (1 << 14)
    assert invoice.bolt11 == text


def test_defaults() -> None:
    invoice = decode_invoice(_ours(), now=NOW)
    assert invoice.expiry_seconds == DEFAULT_INVOICE_EXPIRY_SECONDS
    assert invoice.min_final_cltv_expiry_blocks == DEFAULT_MIN_FINAL_CLTV_EXPIRY_BLOCKS


def test_amountless_and_upper_case() -> None:
    text = _ours(amount_msat=None, description="")
    invoice = decode_invoice(text.upper(), now=NOW)
    assert invoice.amount_msat is None and invoice.description == ""


def test_expiry_against_now() -> None:
    text = _ours(expiry_seconds=60)
    assert decode_invoice(text, now=NOW + 59)
    with pytest.raises(InvoiceError, match="expired"):
        decode_invoice(text, now=NOW + 60)


def test_the_amount_is_signed() -> None:
    # Re-encode the same data and signature under another amount: the checksum is
    # valid, the signature no longer is.
    hrp, data = bech32.bech32_decode(_ours(amount_msat=150_000))
    assert hrp is not None and data is not None
    forged = bech32.bech32_encode(hrp.replace("1500n", "1500u"), data)
    with pytest.raises(InvoiceError):
        parse_invoice(forged)


def _unsigned(features: Features | None = None, payee: bool = False) -> bolt11.Bolt11:
    tags = [Tag(TagChar.payment_hash, PAYMENT_HASH.hex()),
            Tag(TagChar.payment_secret, PAYMENT_SECRET.hex()),
            Tag(TagChar.description, "x"), Tag(TagChar.min_final_cltv_expiry, 18)]
    if features is not None:
        tags.append(Tag(TagChar.features, features))
    if payee:
        tags.append(Tag(TagChar.payee, PAYEE_ID.hex()))
    return bolt11.Bolt11(currency="bcrt", date=NOW, tags=Tags(tags),
                         amount_msat=bolt11.MilliSatoshi(1_000))


_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _high_s(text: str) -> str:
    """The same invoice with its signature's S replaced by N - S (and the recovery id
    flipped, so recovery still yields the payee's key): valid math, non-canonical."""
    hrp, data = bech32.bech32_decode(text)
    assert hrp is not None and data is not None
    raw = bytes(bech32.convertbits(data, 5, 8, pad=True) or [])
    # The last 104 5-bit groups are the 520-bit signature.
    signature = bytes(bech32.convertbits(data[-104:], 5, 8, pad=False) or [])
    r, s, recid = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    assert raw  # decoded
    malleated = r + (_N - s).to_bytes(32, "big") + bytes((recid ^ 1,))
    groups = bech32.convertbits(malleated, 8, 5, pad=False)
    assert groups is not None and len(groups) == 104
    return bech32.bech32_encode(hrp, data[:-104] + groups)


def test_a_high_s_signature_is_refused() -> None:
    genuine = bolt11.encode(_unsigned(), private_key=PAYEE_SECRET.hex())  # no n: recovery
    assert parse_invoice(genuine).payee_node_id == PAYEE_ID
    malleated = _high_s(genuine)
    # The bolt11 package alone would accept it, recovering the same payee...
    assert bolt11.decode(malleated).payee == PAYEE_ID.hex()
    with pytest.raises(InvoiceError):
        parse_invoice(malleated)


def test_a_declared_payee_must_have_signed() -> None:
    other = hashlib.sha256(b"someone else").digest()
    forged = bolt11.encode(_unsigned(payee=True), private_key=other.hex(), keep_payee=True)
    with pytest.raises(InvoiceError):
        parse_invoice(forged)


def test_unknown_compulsory_feature_is_refused_optional_accepted() -> None:
    required = Features.from_feature_list({FeatureExtra(50): FeatureState.required})
    optional = Features.from_feature_list({FeatureExtra(50): FeatureState.supported})
    with pytest.raises(InvoiceError, match="unknown features"):
        parse_invoice(bolt11.encode(_unsigned(required), private_key=PAYEE_SECRET.hex()))
    # However far up the vector the compulsory bit sits.
    far = Features.from_feature_list({FeatureExtra(1000): FeatureState.required})
    with pytest.raises(InvoiceError, match="unknown features"):
        parse_invoice(bolt11.encode(_unsigned(far), private_key=PAYEE_SECRET.hex()))
    assert parse_invoice(bolt11.encode(_unsigned(optional), private_key=PAYEE_SECRET.hex()))


@pytest.mark.parametrize("kwargs", [
    {"amount_msat": 0}, {"amount_msat": -1}, {"payment_hash": bytes(31)},
    {"payment_secret": b""}, {"description": "x" * 640}, {"expiry_seconds": 0},
    {"min_final_cltv_expiry_blocks": 0}, {"min_final_cltv_expiry_blocks": 5000},
    {"node_secret": bytes(32)}, {"now": 0},
])
def test_create_refusals(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvoiceError):
        _ours(**kwargs)


def test_create_bounds_are_inclusive() -> None:
    # The largest values each field holds are accepted; one more is refused.
    assert decode_invoice(_ours(description="é" * 319 + "x"), now=NOW)  # 639 bytes
    with pytest.raises(InvoiceError):
        _ours(description="é" * 320)  # 640 bytes
    assert parse_invoice(_ours(expiry_seconds=2**32 - 1))
    with pytest.raises(InvoiceError):
        _ours(expiry_seconds=2**32)
    assert parse_invoice(_ours(now=2**35 - 1)).created_at == 2**35 - 1
    with pytest.raises(InvoiceError):
        _ours(now=2**35)
    assert parse_invoice(_ours(min_final_cltv_expiry_blocks=2016))


def test_length_bound() -> None:
    with pytest.raises(InvoiceError, match="sane length"):
        parse_invoice("lnbcrt1" + "q" * 4090)  # 4,097 characters
    with pytest.raises(InvoiceError) as refused:
        parse_invoice("lnbcrt1" + "q" * 4089)  # 4,096: read, then refused for its content
    assert "sane length" not in str(refused.value)
    with pytest.raises(InvoiceError, match="sane length"):
        parse_invoice("")


def test_an_unpayable_final_cltv_is_refused_by_the_payer() -> None:
    tags = Tags([Tag(TagChar.payment_hash, PAYMENT_HASH.hex()),
                 Tag(TagChar.payment_secret, PAYMENT_SECRET.hex()),
                 Tag(TagChar.description, "x"), Tag(TagChar.min_final_cltv_expiry, 2017)])
    text = bolt11.encode(bolt11.Bolt11(currency="bcrt", date=NOW, tags=tags),
                         private_key=PAYEE_SECRET.hex())
    assert parse_invoice(text).min_final_cltv_expiry_blocks == 2017
    with pytest.raises(InvoiceError, match="final CLTV"):
        decode_invoice(text, now=NOW)


@given(amount=st.one_of(st.none(), st.integers(1, 2**40)),
       description=st.text(max_size=100).filter(lambda d: len(d.encode()) <= 639),
       expiry=st.integers(1, 2**32 - 1), cltv=st.integers(1, 2016),
       now=st.integers(1, 2**34))
def test_round_trip_property(amount: int | None, description: str, expiry: int, cltv: int,
                             now: int) -> None:
    made = create_invoice(node_secret=PAYEE_SECRET, payment_hash=PAYMENT_HASH,
                          payment_secret=PAYMENT_SECRET, amount_msat=amount,
                          description=description, expiry_seconds=expiry,
                          min_final_cltv_expiry_blocks=cltv, now=now)
    invoice = decode_invoice(made.bolt11, now=now)
    assert invoice == made
    assert (invoice.amount_msat, invoice.description, invoice.expiry_seconds,
            invoice.min_final_cltv_expiry_blocks, invoice.created_at) == (
        amount, description, expiry, cltv, now)


# -- the barrage -----------------------------------------------------------------------------

GOOD = [_ours(), _ours(amount_msat=None), COFFEE]
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


@st.composite
def mutated_invoice(draw: st.DrawFn) -> str:
    text = list(draw(st.sampled_from(GOOD)))
    for _ in range(draw(st.integers(1, 3))):
        if not text:
            break
        kind = draw(st.sampled_from(["char", "cut", "insert", "case", "bytes"]))
        at = draw(st.integers(0, len(text) - 1))
        if kind == "char":
            text[at] = draw(st.sampled_from(BECH32 + "1bB\x00é"))
        elif kind == "cut":
            text = text[:at]
        elif kind == "insert":
            text[at:at] = list(draw(st.text(alphabet=BECH32 + "1", max_size=20)))
        elif kind == "case":
            text[at] = text[at].swapcase()
        else:
            text[at:at] = list(draw(st.text(max_size=5)))
    return "".join(text)


@st.composite
def rechecksummed(draw: st.DrawFn) -> str:
    """A mutation past the checksum: change the data, then recompute the checksum,
    so the parser's inner layers (tags, signature) see hostile bits."""
    hrp, data = bech32.bech32_decode(draw(st.sampled_from(GOOD)).lower())
    assert hrp is not None and data is not None
    data = list(data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["set", "cut", "insert"]))
        if kind == "set":
            data[at] = draw(st.integers(0, 31))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 10))]
        else:
            data[at:at] = draw(st.lists(st.integers(0, 31), max_size=10))
    new_hrp = draw(st.sampled_from([hrp, "lnbcrt", "lnbcrt0", "lnbcrt1p", "lnbcrt10p",
                                    "lnbcrt999999999999999999m", "lnxx", "ln"]))
    return bech32.bech32_encode(new_hrp, data)


@given(st.one_of(st.text(max_size=300), mutated_invoice(), rechecksummed()))
def test_decoders_refuse_hostile_strings_with_one_error(text: str) -> None:
    for decode in (parse_invoice, lambda t: decode_invoice(t, now=NOW)):
        with contextlib.suppress(InvoiceError):
            decode(text)

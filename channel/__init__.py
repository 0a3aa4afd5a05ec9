"""channel: the on-chain contract of one channel (BOLT #3, legacy non-anchor
format with option_static_remotekey; BOLT #5 for spending it). Pure functions and
value types: no I/O, no clock, no randomness (channel/chain, the chain client, is
the one exception and lives apart).

Public API (see docs/dev/channel-api.md for the contract):

- ``tx``: ``OutPoint``, ``TxIn``, ``TxOut``, ``Tx`` (own serialization, parse, txid).
- ``keys``: ``Basepoints``, ``ChannelSecrets`` (``from_seed``, ``basepoints``,
  ``per_commitment_secret/point``), ``derive_pubkey``, ``derive_privkey``,
  ``derive_revocation_pubkey``, ``derive_revocation_privkey``, ``pubkey_from_secret``,
  ``CommitmentKeys``/``derive_commitment_keys``.
- ``shachain``: ``generate_from_seed``, ``commitment_index``, ``RevocationStore``.
- ``scripts``: funding, to_local, offered/received HTLC scripts, P2WSH/P2WPKH.
- ``sighash``: BIP143 (``bip143_sighash``, ``Bip143Precomputed``), ``legacy_sighash``.
- ``signing``: compact ECDSA ``sign``/``verify`` and DER conversion.
- ``commitment``: ``Side``, ``CommitmentHtlc``, ``ChannelParty``, ``ChannelStatic``,
  ``build_commitment`` -> ``Commitment``, ``commitment_fee_sat``, ``is_htlc_trimmed``,
  ``sign_counterparty_commitment``, ``verify_holder_commitment``,
  ``build_htlc_transactions``, ``finalize_holder_commitment``,
  ``finalize_holder_htlc_tx``.
- ``htlc``: HTLC-success/timeout construction, fees and trimming rules.
- ``closing``: ``closing_tx_to_sign``, ``closing_tx_signed_by_peer``,
  ``build_closing_tx``, ``sign_closing_tx``, ``verify_closing_signature``,
  ``finalize_closing_tx``.
- ``penalty``: spending every output of a revoked commitment and of its
  second-stage HTLC transactions with the revocation key (BOLT #5).
- ``sweep``: our to_local and second-stage outputs after the delay, HTLC outputs of
  the peer's commitment by preimage or after timeout (BOLT #5).
- ``watch``: ``ChannelWatch``, the pure BOLT #5 watch object of one channel, and
  ``WatchSet`` for many (docs/dev/watch-api.md).
- ``errors``: ``ChannelError`` > ``InvalidSignature``, ``ShachainError``,
  ``TransactionError``.
"""

"""channel/chain."""

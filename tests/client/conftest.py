"""Client tests: a real HubNode in-process, ClientNodes over memory links (the same
FrameLink interface the gRPC link implements), channels funded on the embedded
regtest node and checked by the hub at depth."""

from tests.driver.conftest import postgres_url  # noqa: F401

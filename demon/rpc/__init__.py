"""The controller RPC channel: JSON lines over a local socket, with a token.

Standard library only (the POX component imports it). The contract is
``docs/rpc-protocol.md``.
"""

from demon.rpc.protocol import PROTOCOL_VERSION, Event, RpcError

__all__ = ["PROTOCOL_VERSION", "Event", "RpcError"]

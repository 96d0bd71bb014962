"""Controller components behind the RPC protocol (``docs/rpc-protocol.md``).

``of10`` and ``pox_tap`` (OpenFlow 1.0, POX) and the shared pure modules they
import stay standard library only: POX loads them in its own interpreter.
"""

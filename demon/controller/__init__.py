"""Controller components behind the RPC protocol (``docs/rpc-protocol.md``).

One pure core, the mirror book (``book``, with ``merge``, ``of10``/``of13``,
``fabric``, ``spec``, ``changes``), and the service around it (``service``,
``replies``) serve both components; ``osken_app`` (OpenFlow 1.3) and ``pox_tap``
(OpenFlow 1.0) only translate between their framework and the service. All but
``osken_app`` stay standard library only: POX loads them in its own interpreter.
"""

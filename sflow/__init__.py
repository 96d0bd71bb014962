"""Everything that speaks sFlow: datagram decoding, flow keys, the embedded
sFlow-RT-compatible engine and the sFlow-RT REST client.

Imports nothing from ``demon``.
"""

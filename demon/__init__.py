"""pytapdemon: sFlow-driven, on-demand taps for OpenFlow networks.

Everything the POX component imports from this package must stay standard
library only (see docs/architecture in README): no third-party imports here.
"""

__version__ = "0.1.0"

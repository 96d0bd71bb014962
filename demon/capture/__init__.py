"""The capture host's side: ``demon-capture`` files mirrored frames into one capture
file series per tap (told apart by VLAN tag or by the tap's match, in the kernel)
with manifests beside them. See docs/capture.md.

Modules: ``ring`` (kernel rings and their fanout group), ``bpf`` (the kernel's
demultiplexer compiled from the tap table), ``live`` (the receive loop),
``filer`` (the socket-free core), ``sink``/``files``/``budget`` (output),
``taptable`` (where taps come from), ``stream`` (the daemon's transitions),
``metrics``, ``agent`` (the command line). The receive path is standard library;
metrics need ``prometheus_client`` and ``--daemon`` needs ``requests``.
"""

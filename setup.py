"""Build glue for the one compiled module, sflow._ingest (metadata is in setup.cfg).

The extension is optional: when it cannot be built (no C compiler, no Python
headers) the install goes on and the engine uses its pure-Python path
(``sflow.ingest``), with the same results.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sflow._ingest", ["sflow/_ingest.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11", "-D_GNU_SOURCE"])])

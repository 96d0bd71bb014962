"""The conformance suite against the POX component (OpenFlow 1.0), from the POX checkout beside the venv."""

import pytest

from tests.demon.controller.conformance import ConformanceSuite

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.pox]


class TestPoxConformance(ConformanceSuite):
    KIND = "pox"

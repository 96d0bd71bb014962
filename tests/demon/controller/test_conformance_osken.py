"""The conformance suite against the os-ken component (OpenFlow 1.3) on the real seed topology."""

import pytest

from tests.demon.controller.conformance import ConformanceSuite

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class TestOsKenConformance(ConformanceSuite):
    KIND = "os-ken"

"""Shared by the tests: ``lib``, the library a torch-style test runs on (tapegrad, and torch when it
is installed), so that the behaviour asserted is torch's."""
import pytest

import tapegrad as tg


@pytest.fixture(params=["tapegrad", "torch"])
def lib(request):
    if request.param == "torch":
        return pytest.importorskip("torch")
    return tg

"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def check_audio_encoder():
    """The real X-ARES checker (xares 0.1.3). It is not a dev requirement because xares' own
    requirements pull torchaudio, which pins another torch build; the test skips, before it runs,
    with the command that installs it."""
    module = pytest.importorskip(
        "xares.audio_encoder_checker",
        reason="xares is not installed: run `pip install --no-deps xares==0.1.3 loguru` (as .ci/run does)")
    return module.check_audio_encoder

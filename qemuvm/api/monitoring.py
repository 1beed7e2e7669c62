"""The facade's sampling of every instance: what `qemuvm top` shows, `qemuvm metrics` prints and `qemuvm web`
serves at /metrics (control/top.py does the reading: records, psutil, one QMP query per running VM)."""

from __future__ import annotations

from qemuvm.control.top import Sampler, sample_once

__all__ = ["Sampler", "sample_once"]

"""The stages, in the order `invoke deploy` runs them: adding a stage is one entry here plus its
module (which declares its `STAGE`: name, cache key, outputs, when it applies, its run)."""

from __future__ import annotations

from .base import Stage
from .check import STAGE as CHECK
from .compile import STAGE as COMPILE
from .diagnose import STAGE as DIAGNOSE
from .firmware import STAGE as FIRMWARE
from .hil import STAGE as HIL
from .quantize import STAGE as QUANTIZE
from .verify import STAGE as VERIFY

REGISTRY: dict[str, Stage] = {s.name: s for s in (QUANTIZE, CHECK, COMPILE, FIRMWARE, VERIFY, DIAGNOSE, HIL)}

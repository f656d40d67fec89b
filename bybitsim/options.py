"""The simulator's settings, read once: common Settings (sim_host, sim_port, sim_rate)
plus its own SIM_* environment variables (described in common/config.py)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from common.config import SIM, ConfigError, Settings, read_all

from .faults import REJECT_MODES
from .protocol import Symbols


LISTINGS = ("open", "realistic")


@dataclass(frozen=True)
class SimOptions:
    host: str = "127.0.0.1"
    port: int = 8765                  # 0 = any free port
    rate: float = 10.0                # public frames/s per subscribed topic (0 = silent)
    api_key: str = field(default="sim-key", repr=False)
    api_secret: str = field(default="sim-secret", repr=False)
    symbols: str = ""                 # SIM_SYMBOLS: "" = every well-formed symbol exists
    account_rate: float = 2.0         # account events/s (orders placed, filled, cancelled)
    seed: int = 0                     # frames are reproducible from the seed and the timestamps
    reject_mode: str = "whole"
    account_symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    max_pushes: int = 100_000         # the private push log (ground truth "pushes"): at most this many frames
    push_window_s: float = 300.0      # ... sent in the last this many seconds
    max_stalled_pushes: int = 10_000  # pushes a stalled private connection may queue; past it, dropped
    listing: str = "open"             # SIM_LISTING: open (every symbol exists) or realistic (market.Listing)
    churn_s: float = 0.0              # SIM_CHURN_S: realistic listing lists or delists a symbol this often (0: never)

    def __post_init__(self):
        if self.rate < 0 or self.account_rate < 0:
            raise ConfigError("rate and account_rate must be >= 0")
        if self.max_pushes < 1 or not self.push_window_s > 0:
            raise ConfigError("max_pushes must be >= 1 and push_window_s > 0")
        if self.max_stalled_pushes < 1:
            raise ConfigError("max_stalled_pushes must be >= 1")
        if self.listing not in LISTINGS:
            raise ConfigError(f"SIM_LISTING must be one of {', '.join(LISTINGS)}, got {self.listing!r}")
        if self.churn_s < 0:
            raise ConfigError("SIM_CHURN_S must be >= 0")
        if self.reject_mode not in REJECT_MODES:
            raise ConfigError(f"reject_mode must be one of {REJECT_MODES}, got {self.reject_mode!r}")
        try:
            Symbols(self.symbols)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def options_from_env(settings: Settings, env: Mapping[str, str] | None = None) -> SimOptions:
    """The simulator's SIM_* settings, read through the gateway's settings table (types,
    defaults and bounds there); SIM_HOST, SIM_PORT and SIM_RATE come with ``settings``."""
    values = read_all(SIM, os.environ if env is None else env)
    values["account_symbols"] = tuple(s for s in values["account_symbols"].split(",") if s)
    return SimOptions(host=settings.sim_host, port=settings.sim_port, rate=settings.sim_rate, **values)

"""A Bybit v5 WebSocket simulator: public and private streams, REST time, control API.

``python -m bybitsim`` runs it as a process; ``run_in_thread(...)`` runs it in-process for
tests; ``bybitsim.control.SimControl(base_url)`` drives a running one. See README.md.
"""
from .control import SimControl
from .options import SimOptions
from .protocol import sign
from .thread import SimHandle, run_in_thread

__all__ = ["SimControl", "SimHandle", "SimOptions", "run_in_thread", "sign"]

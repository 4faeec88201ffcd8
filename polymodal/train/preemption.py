"""Stop cleanly when the scheduler asks: SIGTERM (SLURM/Kubernetes pre-emption, ``scancel``) and SIGUSR1 (SLURM's
``--signal=USR1@<seconds>`` warning before the time limit) make the trainer save a checkpoint after the current
step and exit; a requeued job then resumes from it (``experiment.resume=auto``).

Ranks must agree on the step they stop at (the checkpoint is a collective), so under ``torch.distributed`` the
flag is all-reduced after every step: one tiny collective per step, far cheaper than losing the work since the
last ``ckpt_every``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """While entered, records the first stop signal instead of dying on it; restores the handlers on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(number)

"""Stopping a run cleanly: SIGINT or SIGTERM ends it after the current step, with a checkpoint."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``fit`` after a stop signal, once its checkpoint is written (None off the main process)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(f"{signal.Signals(signum).name}: stopped with checkpoint {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


class StopSignals:
    """While entered, a first SIGINT/SIGTERM is recorded in ``received`` for the loop to act on;
    a second one raises KeyboardInterrupt at once. The previous handlers come back on exit.
    Off the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, signal.Handlers | object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        log.info("%s: stopping after this step with a checkpoint (again to stop at once)", signal.Signals(signum).name)

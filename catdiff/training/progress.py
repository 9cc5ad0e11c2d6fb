"""What a run reports: a progress bar or plain lines for a person, ``log.jsonl`` for programs."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from catdiff.io.atomic import atomic_file
from catdiff.training.budget import time_left
from catdiff.training.config import TrainConfig

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"


def duration(seconds: float) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress(contextlib.ExitStack):
    """On a terminal a tqdm bar (in steps, or in seconds with a time budget) with log messages
    printed above it; otherwise one plain log line per logged step. Silent unless ``enabled``."""

    def __init__(self, config: TrainConfig, step: int, spent: float, *, enabled: bool) -> None:
        super().__init__()
        self.config, self.enabled = config, enabled
        self.start = (step, spent)
        self.bar: tqdm | None = None
        if enabled and sys.stderr.isatty():
            self.enter_context(logging_redirect_tqdm())
            if config.time_budget is None:
                self.bar = tqdm(total=config.max_steps, initial=step, desc="training")
            else:
                bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"
                self.bar = tqdm(total=config.time_budget, initial=spent, desc="training", bar_format=bar_format)
            self.callback(self.bar.close)

    def update(self, step: int, spent: float) -> None:
        if self.bar is not None:
            self.bar.update(1 if self.config.time_budget is None else min(spent, self.bar.total) - self.bar.n)

    def record(self, record: dict[str, Any]) -> None:
        """Show a logged step: on the bar, or as a line."""
        if self.bar is not None:
            self.bar.set_postfix(step=record["step"], loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.1f}")
        elif self.enabled:
            log.info("%s", self.line(record))

    def line(self, record: dict[str, Any]) -> str:
        step, spent = record["step"], record["elapsed"]
        of = "" if self.config.max_steps is None else f"/{self.config.max_steps}"
        text = f"step {step}{of} | loss {record['loss']:.4f} | {record['img_per_s']:.1f} img/s | {duration(spent)}"
        seconds_per_step = (spent - self.start[1]) / max(1, step - self.start[0])
        left = time_left(step, spent, seconds_per_step, self.config)
        return text if math.isinf(left) else f"{text} | ~{duration(left)} left"

    def note(self, message: str) -> None:
        if self.enabled:
            log.info("%s", message)


# --- log.jsonl ------------------------------------------------------------------------------


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / LOG_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's log; a line cut short by a kill (or anything else that is not a
    record of a step) is skipped."""
    path = run_dir / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


def truncate_log(run_dir: Path, step: int) -> None:
    """Keep the records up to ``step`` (where a run starts or resumes), so that no step is
    logged twice; lines cut short are dropped. The log is replaced atomically."""
    if (run_dir / LOG_FILE).is_file():
        kept = [json.dumps(r) + "\n" for r in read_log(run_dir) if r["step"] <= step]
        with atomic_file(run_dir / LOG_FILE) as tmp:
            tmp.write_text("".join(kept))

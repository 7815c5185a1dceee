"""Stopping a run on request: Ctrl-C and the signals schedulers send before they kill a job.

Each of these signals asks a training run to finish its current step, save a checkpoint, say so and stop:

    SIGINT    Ctrl-C in a terminal
    SIGTERM   Slurm at the time limit, on preemption or scancel; Kubernetes when a pod is evicted or deleted;
              torchrun forwards it to every worker; `kill PID`
    SIGUSR1   Slurm's advance warning when the job asks for it (`#SBATCH --signal=B:USR1@120`: 120 s before the end);
              also the usual choice of job wrappers that requeue
    SIGHUP    the terminal or ssh session that started the run closed

A second signal while the step finishes stops at once (the last complete checkpoint stays valid). Schedulers send
SIGKILL after a grace period (Slurm's KillWait, 30 s by default; Kubernetes' terminationGracePeriodSeconds, 30 s):
a step must end and save within it for the checkpoint to be written, else the previous checkpoint is resumed.

`red-rlhf train` exits with STOPPED_EXIT (75, EX_TEMPFAIL: "try again later") after a stop by signal with the
checkpoint saved, so that a job script can tell "saved, requeue me" from a crash (1), a user error (2) or a kill
before anything could be saved (143 = 128 + SIGTERM); Ctrl-C keeps the shell's 130.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP") if hasattr(signal, name))
STOPPED_EXIT = 75
INTERRUPTED_EXIT = 130


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal: after its checkpoint of `step` was saved, or (step None) at once, on a second
    signal or during start-up, the last complete checkpoint being the one to resume from. A KeyboardInterrupt, so
    that callers that handled Ctrl-C before keep doing so."""

    def __init__(self, signal_name: str, step: int | None, output_dir: Path):
        done = f"stopped after step {step}, checkpoint saved" if step else "stopped at once"
        super().__init__(f"{signal_name}: {done} ({output_dir})")
        self.signal_name, self.step, self.output_dir = signal_name, step, Path(output_dir)

    @property
    def exit_code(self) -> int:
        return INTERRUPTED_EXIT if self.signal_name == "SIGINT" else STOPPED_EXIT


def install(handler) -> dict:
    """Point every stop signal at `handler`; returns the previous handlers for `restore`."""
    return {sig: signal.signal(sig, handler) for sig in SIGNALS}


def restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def code_of(name: str | None) -> int:
    """A signal's number, 0 for none (what the processes of a run reduce to agree on a stop)."""
    return int(getattr(signal, name)) if name else 0


def name_of(code: int) -> str | None:
    return signal.Signals(code).name if code else None


def raise_on_signal(signum, frame):
    """Before training starts (models loading) there is no step to finish and nothing to save: stop now."""
    raise Stopped(signal.Signals(signum).name, None, Path("."))


def say(message: str) -> None:
    """Print from a signal handler: the signal may have interrupted a print to the same stream, and a buffered
    stream refuses a reentrant write (RuntimeError); the bytes then go straight to the file descriptor."""
    try:
        print(message, flush=True)
    except RuntimeError:
        os.write(sys.stdout.fileno(), (message + "\n").encode())

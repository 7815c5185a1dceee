"""`red-rlhf train` under torchrun where only rank 1 receives SIGTERM, during step STOP_AT (env): every rank must
stop after the same step and save one checkpoint together. Usage: torchrun ... tests/stop_worker.py TRAIN-ARGS..."""

import os
import signal
import sys

from red_rlhf.training.trainer import Trainer

STOP_AT = int(os.environ.get("STOP_AT", "2"))
original = Trainer.train_step


def train_step(self):
    if self.acc.process_index == 1 and self.step + 1 == STOP_AT:  # a scheduler's signal reaching one rank first
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self)


Trainer.train_step = train_step

if __name__ == "__main__":
    from red_rlhf.cli import main

    sys.exit(main(sys.argv[1:]))

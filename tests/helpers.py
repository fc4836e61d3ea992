"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""
from instag.trainer import Callback


class Killed(Exception):
    "What `KillAt` raises: a kill between checkpoints."


class KillAt(Callback):
    "Raise after global iteration `n` (counting all stages), as a kill between checkpoints would stop the run."
    order = 100
    def __init__(self, n): self.n, self.done = n, 0
    def after_step(self, t):
        self.done += 1
        if self.done == self.n: raise Killed()

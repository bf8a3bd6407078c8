"""Wall time per pipeline stage (the record's ``timings``), and the device a run asks for."""
from __future__ import annotations

import time
from contextlib import contextmanager


class Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - t0, 3)


class DeviceError(ValueError):
    pass


def pick_device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={spec!r} but CUDA is not available here; valid here: auto, cpu")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise DeviceError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N")
    return spec

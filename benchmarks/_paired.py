"""Side-by-side timing of a training loop under several storage setups ("arms").

This machine's speed drifts by 10-30 % over seconds (a shared host), more than the
effects measured. So the arms are not run one long loop each: they take turns in short
blocks (``block`` steps), in an order that rotates every round, and each block is
compared with the reference arm's block of the same round, a second or two apart. A
storer is flushed after each of its blocks, outside the timing, so that no arm's
background work runs into another's block; the flush time is reported on its own (it
is the storage work the loop did not overlap).

Reported per arm: ms per step (median over rounds), the median of the per-round ratios
to the reference arm with their quartiles, the mean flush after a block, and the
paired ratio counting the flush in (the time to train *and* store a block: where a
sink is slower than the loop, this is what a long run pays, the first ratio only what
the loop pays while the backlog fits in the queue).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Step = Any


@dataclass
class Arm:
    name: str
    save: Callable[[Step], None] | None = None  # what the loop does with each step
    settle: Callable[[], None] | None = None  # after a block, untimed: flush
    ms: list[float] = field(default_factory=list)  # per block, ms per step
    cpu: list[float] = field(default_factory=list)  # per block, training thread CPU ms/step
    flush_ms: list[float] = field(default_factory=list)
    block: int = 0  # steps per block, set by compare()


def run_block(make_step: Callable[[], Step], arm: Arm, steps: int) -> None:
    save = arm.save
    c0 = time.thread_time()
    t0 = time.perf_counter()
    for _ in range(steps):
        step = make_step()
        if save is not None:
            save(step)
    arm.ms.append((time.perf_counter() - t0) / steps * 1e3)
    arm.cpu.append((time.thread_time() - c0) / steps * 1e3)
    if arm.settle is not None:
        t0 = time.perf_counter()
        arm.settle()
        arm.flush_ms.append((time.perf_counter() - t0) * 1e3)


def compare(make_step: Callable[[], Step], arms: list[Arm], *, rounds: int, block: int,
            verbose: bool = True) -> None:
    """Run ``rounds`` rounds, each a block of every arm, the order rotating."""
    for arm in arms:
        arm.block = block
    for r in range(rounds):
        k = r % len(arms)
        order = arms[k:] + arms[:k]
        if r % 2:
            order.reverse()
        for arm in order:
            run_block(make_step, arm, block)
        if verbose:
            print(f"round {r:2d}: " + ", ".join(f"{a.name} {a.ms[-1]:.3f}" for a in arms)
                  + " ms/step", flush=True)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return v, v, v
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def report(arms: list[Arm], reference: Arm, title: str) -> dict[str, float]:
    """Print the table; returns each arm's median paired ratio to ``reference``."""
    print(f"\n== {title} ==")
    print(f"{'':36}{'ms/step':>9}{'train-thread CPU':>18}{'paired ratio':>14}"
          f"{'quartiles':>16}{'flush ms':>10}{'with flush':>12}")
    out = {}
    for arm in arms:
        ratios = [a / b for a, b in zip(arm.ms, reference.ms, strict=True)]
        lo, mid, hi = quartiles(ratios)
        out[arm.name] = mid
        flush = f"{statistics.mean(arm.flush_ms):10.1f}" if arm.flush_ms else f"{'':10}"
        whole = statistics.median(
            _with_flush(arm, k) / _with_flush(reference, k) for k in range(len(arm.ms))
        )
        out[arm.name + " with flush"] = whole
        print(f"{arm.name:36}{statistics.median(arm.ms):9.3f}{statistics.median(arm.cpu):15.3f} ms"
              f"{mid:13.3f}x  [{lo:.3f}, {hi:.3f}]{flush}{whole:11.3f}x")
    return out


def _with_flush(arm: Arm, k: int) -> float:
    """Block ``k``'s whole time in ms, its flush included."""
    flush = arm.flush_ms[k] if k < len(arm.flush_ms) else 0.0
    return arm.ms[k] * arm.block + flush




"""The writer's own logic, with in-memory sinks (the real stores are tested elsewhere)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest
import torch

from asyncstore import _codec, _layout
from asyncstore._queue import OpQueue, StepOp, WritesOp
from asyncstore._results import TrainingStepResult
from asyncstore._writer import RetryPolicy, Unit, Writer


class Transient(Exception):
    pass


class MemorySink:
    """Records what it is given; can fail a number of times, or forever, or stall."""

    def __init__(self, name: str, level: int = 2, fail_times: int = 0,
                 permanent: bool = False) -> None:
        self.name, self.level = name, level
        self.fail_times, self.permanent = fail_times, permanent
        self.units: list[Unit] = []
        self.commits = 0
        self.gate: anyio.Event | None = None
        self.reject = ""  # a commit holding a unit with this text in its name is refused

    def payloads(self, units: Sequence[Unit]) -> list[tuple[Any, list[Unit]]]:
        return [(list(units), list(units))]

    async def commit(self, payload: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.permanent or (self.reject and any(self.reject in u.what for u in payload)):
            raise PermissionError("denied")
        if self.fail_times > 0:
            self.fail_times -= 1
            raise Transient("try again")
        self.commits += 1
        self.units.extend(payload)

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, Transient)

    async def aclose(self) -> None:
        pass


def step_op(exp: str, i: int) -> StepOp:
    s = TrainingStepResult()
    s.add_metric("x", i)
    return StepOp(exp, "training", i, _codec.encode(_layout.step_record(i, s, {"x"})))


FAST = RetryPolicy(attempts=5, initial=0.001, max_wait=0.01, deadline=5)


async def run_writer(queue: OpQueue, sinks: list[MemorySink], **kw: Any) -> Writer:
    writer = Writer(queue, sinks, retry=FAST, **kw)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        await anyio.sleep(0)
        queue.close()
    return writer


def steps_in(sink: MemorySink) -> list[int]:
    out = []
    for u in sink.units:
        for op in u.ops:
            if isinstance(op, StepOp):
                out.append(op.index)
    return out


@pytest.mark.anyio
async def test_runs_close_at_max_batch_steps_and_keep_order():
    q = OpQueue(1000)
    for i in range(25):
        q.put(step_op("e", i))
    sink = MemorySink("mem")
    await run_writer(q, [sink], max_batch_steps=10)
    assert [len(u.ops) for u in sink.units] == [10, 10, 5]
    assert steps_in(sink) == list(range(25))
    assert q.done == q.accepted == 25


@pytest.mark.anyio
async def test_other_operations_are_committed_after_the_steps_accepted_before_them():
    q = OpQueue(1000)
    q.put(step_op("e", 0))
    q.put(WritesOp("result", []))
    q.put(step_op("e", 1))
    sink = MemorySink("mem")
    await run_writer(q, [sink])
    assert [u.what for u in sink.units] == [
        "training steps 0-0 of experiment 'e'", "result", "training steps 1-1 of experiment 'e'"
    ]


@pytest.mark.anyio
async def test_transient_failures_are_retried_and_counted():
    q = OpQueue(1000)
    q.put(step_op("e", 0))
    sink = MemorySink("flaky", fail_times=3)
    writer = await run_writer(q, [sink])
    assert steps_in(sink) == [0]
    assert writer.stats.retried == 3 and writer.stats.failed == 0 and writer.stats.written == 1


@pytest.mark.anyio
async def test_a_permanent_failure_is_reported_and_other_sinks_still_get_everything():
    q = OpQueue(1000)
    for i in range(3):
        q.put(step_op("e", i))
    bad, good = MemorySink("bad", permanent=True), MemorySink("good")
    writer = await run_writer(q, [bad, good])
    assert steps_in(good) == [0, 1, 2]
    assert writer.stats.failed == 3 and writer.stats.written == 0
    assert writer.stats.failures and "store 'bad'" in writer.stats.failures[0][1]
    assert "PermissionError" in (writer.stats.last_error or "")
    assert q.done == 3  # failed operations do not hold the queue


@pytest.mark.anyio
async def test_a_rejected_unit_fails_alone_not_the_commit_it_shared():
    q = OpQueue(1000)
    q.put(step_op("e", 0))
    q.put(WritesOp("poison", []))
    q.put(step_op("e", 1))
    sink = MemorySink("picky")
    sink.reject = "poison"
    writer = await run_writer(q, [sink])
    assert steps_in(sink) == [0, 1]
    assert writer.stats.failed == 1 and writer.stats.written == 2
    assert [text for _, text in writer.stats.failures] == ["poison in store 'picky': "
                                                          "PermissionError: denied"]


@pytest.mark.anyio
async def test_a_stalled_sink_does_not_hold_back_another():
    q = OpQueue(1000)
    stalled, fast = MemorySink("stalled"), MemorySink("fast")
    stalled.gate = anyio.Event()
    writer = Writer(q, [stalled, fast], retry=FAST, flush_interval=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        for i in range(5):
            q.put(step_op("e", i))
        q.request_flush()
        with anyio.fail_after(5):
            while steps_in(fast) != list(range(5)):
                await anyio.sleep(0.01)
        assert q.done == 0  # not done until every sink has it
        stalled.gate.set()
        q.close()
    assert steps_in(stalled) == list(range(5)) and q.done == 5


class OnePerPayloadSink(MemorySink):
    """Each unit a payload of its own, each commit held at a gate: a slow sink."""

    def payloads(self, units: Sequence[Unit]) -> list[tuple[Any, list[Unit]]]:
        return [([u], [u]) for u in units]


@pytest.mark.anyio
async def test_a_slow_sink_frees_queue_room_payload_by_payload():
    """A backlog the lane takes at once is done unit by unit as its payloads commit:
    a producer waiting for room waits for one payload, not the whole backlog."""
    q = OpQueue(1000)
    sink = OnePerPayloadSink("slow")
    gates = [anyio.Event() for _ in range(3)]
    calls = 0

    async def commit(payload: Any) -> None:
        nonlocal calls
        calls += 1
        await gates[calls - 1].wait()
        sink.units.extend(payload)

    sink.commit = commit  # type: ignore[method-assign]
    writer = Writer(q, [sink], retry=FAST, flush_interval=0.01, max_batch_steps=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        for i in range(6):  # three units of two steps, all in the lane at once
            q.put(step_op("e", i))
        q.request_flush()
        with anyio.fail_after(5):
            while calls < 1:
                await anyio.sleep(0.01)
            gates[0].set()
            while q.done < 2:
                await anyio.sleep(0.01)
        assert q.done == 2  # the first unit is done; the others wait on their commits
        gates[1].set()
        gates[2].set()
        q.close()
    assert q.done == 6 and steps_in(sink) == list(range(6))


@pytest.mark.anyio
async def test_summary_only_sinks_get_no_steps():
    q = OpQueue(1000)
    q.put(step_op("e", 0))
    q.put(WritesOp("experiment", [], level=1))
    summaries, everything = MemorySink("summaries", level=1), MemorySink("all", level=2)
    await run_writer(q, [summaries, everything])
    assert [u.what for u in summaries.units] == ["experiment"]
    assert len(everything.units) == 2


@pytest.mark.anyio
async def test_device_snapshots_are_encoded_by_the_writer():
    # What the front queues when a step holds accelerator tensors: a snapshot, no bytes.
    s = TrainingStepResult()
    t = torch.arange(4.0)
    s.add_metric("x", t)
    record = _layout.step_record(0, s, {"x"})
    q = OpQueue(10)
    q.put(StepOp("e", "training", 0, None, _codec.snapshot(record)))
    t += 1  # the snapshot is a copy
    sink = MemorySink("mem")
    await run_writer(q, [sink])
    blob = sink.units[0].ops[0].blob
    assert torch.equal(_codec.decode(blob)["m"]["x"], torch.arange(4.0))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param  # the same writer runs in either kind of event loop

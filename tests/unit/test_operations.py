"""Operation control: join identical retries, refuse different work, never cancel shared work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from aiocsi.context import CallContext, set_call
from aiocsi.engine.operations import KeyKind, OperationKey, Operations, OperationStatistics
from aiocsi.errors import DeadlineExceeded, OperationPending

KEY = OperationKey.volume("vol-1")
OTHER = OperationKey.volume("vol-2")


async def test_identical_retries_join_one_run() -> None:
    ops = Operations(max_running=8)
    runs = 0
    gate = asyncio.Event()

    async def work() -> str:
        nonlocal runs
        runs += 1
        await gate.wait()
        return "done"

    calls = [asyncio.create_task(ops.run(KEY, ("create", 1), "Create", work)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*calls) == ["done"] * 5
    assert runs == 1
    assert ops.active == 0


async def test_different_work_on_the_same_key_is_refused_at_once() -> None:
    ops = Operations(max_running=8)
    gate = asyncio.Event()
    first = asyncio.create_task(ops.run(KEY, "stage", "NodeStage", gate.wait))
    await asyncio.sleep(0)
    with pytest.raises(OperationPending, match="NodeStage is in progress"):
        await ops.run(KEY, "unstage", "NodeUnstage", gate.wait)

    async def quick() -> str:
        return "ok"

    assert await ops.run(OTHER, "unstage", "NodeUnstage", quick) == "ok"
    gate.set()
    await first


async def test_a_caller_that_gives_up_does_not_cancel_the_work() -> None:
    ops = Operations(max_running=8)
    finished = asyncio.Event()

    async def slow() -> int:
        await asyncio.sleep(0.05)
        finished.set()
        return 7

    caller = asyncio.create_task(ops.run(KEY, "s", "Slow", slow))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(finished.wait(), 1)
    assert ops.active == 0


async def test_deadline_expiry_reports_deadline_exceeded_and_work_goes_on() -> None:
    ops = Operations(max_running=8)
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "late"

    async def impatient() -> str:
        set_call(CallContext("r", "Create", deadline=time.monotonic() + 0.02))
        return await ops.run(KEY, "c", "Create", work)

    with pytest.raises(DeadlineExceeded, match="still running"):
        await asyncio.create_task(impatient())
    assert ops.active == 1
    gate.set()
    assert await ops.run(KEY, "c", "Create", work) == "late"


async def test_max_running_queues_excess_in_arrival_order() -> None:
    ops = Operations(max_running=1)
    order: list[int] = []
    gates = [asyncio.Event() for _ in range(3)]

    def job(i: int) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            order.append(i)
            await gates[i].wait()

        return work

    tasks = [
        asyncio.create_task(ops.run(OperationKey.volume(f"vol-{i}"), i, "W", job(i)))
        for i in range(3)
    ]
    await asyncio.sleep(0.01)
    assert order == [0]
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_keys_of_different_kinds_never_exclude_each_other() -> None:
    ops = Operations(max_running=8)
    gate = asyncio.Event()
    first = asyncio.create_task(
        ops.run(OperationKey.volume_name("x"), "a", "CreateVolume", gate.wait)
    )
    await asyncio.sleep(0)

    async def quick() -> str:
        return "ok"

    # The same text under another kind is another key: no ABORTED.
    assert await ops.run(OperationKey.snapshot_name("x"), "b", "CreateSnapshot", quick) == "ok"
    with pytest.raises(OperationPending, match="in progress on volume-name:x"):
        await ops.run(OperationKey(KeyKind.VOLUME_NAME, "x"), "c", "CreateVolume", quick)
    gate.set()
    await first


async def test_statistics_count_running_queued_joined_and_refused() -> None:
    ops = Operations(max_running=1)
    gate = asyncio.Event()
    first = asyncio.create_task(ops.run(KEY, "a", "A", gate.wait))
    second = asyncio.create_task(ops.run(OTHER, "b", "B", gate.wait))
    retry = asyncio.create_task(ops.run(KEY, "a", "A", gate.wait))
    for _ in range(3):  # the callers, then the operations' own tasks, get to run
        await asyncio.sleep(0)
    with pytest.raises(OperationPending):
        await ops.run(KEY, "different", "C", gate.wait)
    # One slot: the first holds it, the second waits; the retry joined the first.
    assert ops.statistics() == OperationStatistics(running=1, queued=1, joined=1, refused=1)
    gate.set()
    await asyncio.gather(first, second, retry)
    assert ops.statistics() == OperationStatistics(running=0, queued=0, joined=1, refused=1)


async def test_several_keys_are_held_together() -> None:
    """A group (or a snapshot and its source) holds every key: any one of them taken by
    other work refuses it, and while it runs each of its keys refuses other work."""
    ops = Operations(max_running=8)
    gate = asyncio.Event()
    group = (OperationKey.group_snapshot_name("g"), KEY, OTHER)
    first = asyncio.create_task(ops.run(group, ("create", "g"), "CreateGroup", gate.wait))
    await asyncio.sleep(0)
    assert ops.active == 1
    for key in (KEY, OTHER):
        with pytest.raises(OperationPending, match="CreateGroup is in progress"):
            await ops.run(key, "expand", "Expand", gate.wait)
    # An identical retry joins; the same name with other keys is refused.
    retry = asyncio.create_task(ops.run(group, ("create", "g"), "CreateGroup", gate.wait))
    await asyncio.sleep(0)
    with pytest.raises(OperationPending):
        await ops.run(
            (KEY, OperationKey.volume("vol-3")), ("create", "g"), "CreateGroup", gate.wait
        )
    gate.set()
    await asyncio.gather(first, retry)
    assert ops.active == 0
    assert ops.statistics().joined == 1

    # Nothing was taken by the refused call: vol-3 is free.
    async def quick() -> str:
        return "ok"

    assert await ops.run(OperationKey.volume("vol-3"), "x", "X", quick) == "ok"


async def test_a_call_needing_two_keys_held_by_two_operations_is_refused() -> None:
    ops = Operations(max_running=8)
    gate = asyncio.Event()
    a = asyncio.create_task(ops.run(KEY, "stage", "Stage", gate.wait))
    b = asyncio.create_task(ops.run(OTHER, "stage", "Stage", gate.wait))
    await asyncio.sleep(0)
    with pytest.raises(OperationPending):
        await ops.run((KEY, OTHER), "stage", "Stage", gate.wait)
    gate.set()
    await asyncio.gather(a, b)

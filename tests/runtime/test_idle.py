"""The hot paths' idle checks read Trio's containers directly; they must give the answers the
public statistics give, in every state that matters."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from trioraft.runtime import idle


def _public_parked(ch: trio.MemoryReceiveChannel[Any]) -> bool:
    st = ch.statistics()
    return st.tasks_waiting_receive > 0 and st.current_buffer_used == 0


async def test_receiver_parked_agrees_with_the_channel_statistics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, recv = trio.open_memory_channel[int](10)
    fast = idle.receiver_parked(recv)
    slow = idle._slow_parked(recv)
    seen: list[tuple[bool, bool, bool]] = []

    def check() -> None:
        seen.append((fast(), slow(), _public_parked(recv)))

    check()  # nobody receiving
    send.send_nowait(1)
    check()  # buffered, nobody receiving
    assert recv.receive_nowait() == 1
    async with trio.open_nursery() as nursery:
        got: list[int] = []

        async def receiver() -> None:
            got.append(await recv.receive())

        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        check()  # parked, nothing buffered
        send.send_nowait(2)
        check()  # handed over, not yet running: no longer waiting
    assert got == [2]
    send.send_nowait(3)
    check()
    assert [s[0] for s in seen] == [False, False, True, False, False]
    assert all(a == b == c for a, b, c in seen)


async def test_tasks_runnable_agrees_with_the_run_statistics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counts: list[tuple[int, int]] = []
    event = trio.Event()

    async def waiter() -> None:
        await event.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        counts.append((idle.tasks_runnable(), trio.lowlevel.current_statistics().tasks_runnable))
        event.set()  # all three become runnable
        counts.append((idle.tasks_runnable(), trio.lowlevel.current_statistics().tasks_runnable))
        counts.append((idle._slow_runnable(), trio.lowlevel.current_statistics().tasks_runnable))
    assert counts == [(0, 0), (3, 3), (3, 3)]


def test_without_trios_containers_the_public_statistics_answer() -> None:
    class Other:
        def statistics(self) -> Any:
            class S:
                tasks_waiting_receive = 1
                current_buffer_used = 0

            return S()

    assert idle.receiver_parked(Other())()  # type: ignore[arg-type]

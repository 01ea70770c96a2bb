"""core.deadline.within: a deadline that costs nothing until the coroutine waits."""

import asyncio

import pytest

from core.deadline import within


def run(coro):
    return asyncio.run(coro)


def test_a_coroutine_that_never_waits_returns_its_value_without_a_timer():
    async def quick():
        return 42

    async def main():
        loop = asyncio.get_running_loop()
        # Already past: a coroutine that never waits still answers (it cannot be late).
        return await within(quick(), loop.time() - 1)

    assert run(main()) == 42


def test_a_coroutine_that_waits_and_finishes_in_time_returns_its_value():
    async def slow():
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return "done"

    async def main():
        return await within(slow(), asyncio.get_running_loop().time() + 30)

    assert run(main()) == "done"


def test_a_coroutine_past_its_deadline_is_cancelled_and_the_caller_gets_timeout_error():
    seen = []

    async def stuck():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("cleaned up")

    async def main():
        with pytest.raises(TimeoutError):
            await within(stuck(), asyncio.get_running_loop().time() + 0.05)

    run(main())
    assert seen == ["cancelled", "cleaned up"]


def test_errors_come_through_before_and_after_the_first_wait():
    async def at_once():
        raise KeyError("first")

    async def later():
        await asyncio.sleep(0)
        raise ValueError("later")

    async def main():
        deadline = asyncio.get_running_loop().time() + 30
        with pytest.raises(KeyError):
            await within(at_once(), deadline)
        with pytest.raises(ValueError):
            await within(later(), deadline)

    run(main())


def test_a_coroutine_may_handle_the_cancellation_and_answer():
    async def stubborn():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "fallback"

    async def main():
        return await within(stubborn(), asyncio.get_running_loop().time() + 0.05)

    # The coroutine swallowed the cancellation and answered: timeout_at still reports the deadline
    # only when the cancellation came out; here it did not, so the answer stands.
    assert run(main()) == "fallback"


def test_cancelling_the_caller_cancels_the_coroutine():
    seen = []

    async def stuck():
        try:
            await asyncio.Event().wait()
        finally:
            seen.append("cleaned up")

    async def main():
        task = asyncio.ensure_future(within(stuck(), asyncio.get_running_loop().time() + 30))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert seen == ["cleaned up"]

"""Build output is written in batches, yet a line followed by silence still shows up promptly."""

import threading

from workers.deploy import BatchedLog


def test_a_line_followed_by_silence_is_written_without_waiting_for_the_next():
    written: list[list[str]] = []
    arrived = threading.Event()

    def write(lines):
        written.append(lines)
        arrived.set()

    with BatchedLog(write, every=0.1) as log:
        log.add("Step 3/5 : RUN sleep 8")
        assert arrived.wait(2), "the batch waited for the next line"
        assert written == [["Step 3/5 : RUN sleep 8"]]
        log.add("a")
        log.add("b")
    assert [line for batch in written for line in batch] == ["Step 3/5 : RUN sleep 8", "a", "b"]

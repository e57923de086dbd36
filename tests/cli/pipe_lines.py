"""Lines of a child's pipe, read as they come and never lost to a buffer.

`select` on a pipe's file object and then `readline()` on it loses lines twice over: the text
stream reads ahead a whole chunk, so a line already read into its buffer makes `select` wait
for bytes that may never come; and `Popen.communicate(timeout=...)` reads the rest from the raw
descriptor, so whatever that buffer held is gone (a daemon's `oracled started` was, when it came
in the same chunk as `api listening`). Reading the descriptor with `os.read` into our own buffer
avoids both.
"""

from __future__ import annotations

import os
import select
import time
from typing import IO


class PipeLines:
    """Complete lines of `pipe` (a child's stdout or stderr opened in binary or text mode),
    read from its descriptor."""

    def __init__(self, pipe: IO[str] | IO[bytes]) -> None:
        self._fd = pipe.fileno()
        self._buffer = b""
        self.ended = False

    def next_line(self, timeout_s: float) -> str | None:
        """The next complete line (with its newline), or None when none came within `timeout_s`
        or the pipe ended (`ended`); a last line without a newline comes at the end."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            if self.ended:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line.decode()
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._fd, 65536)
                self._buffer += chunk
                self.ended = not chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode() + "\n"

    def rest(self, timeout_s: float) -> list[str]:
        """Every line still to come until the pipe ends (the child closed it), at most
        `timeout_s` from now."""
        deadline = time.monotonic() + timeout_s
        lines: list[str] = []
        while (line := self.next_line(max(0.0, deadline - time.monotonic()))) is not None:
            lines.append(line)
        if not self.ended:
            raise TimeoutError(f"the pipe did not end within {timeout_s} s: {lines[-5:]}")
        return lines

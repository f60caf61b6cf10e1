"""Stop strings over streamed text, with hold-back.

Text that could still turn out to be the start of a stop string is held back, so a client never
receives part of a stop string. On a match, the text before the stop string is released and the
stream ends; at the natural end of the stream, `flush()` releases what was held back.
"""

from __future__ import annotations


class StopStringMatcher:
    __slots__ = ("_stops", "_max_hold", "_held", "matched")

    def __init__(self, stops: list[str]) -> None:
        if not stops or any(not s for s in stops):
            raise ValueError("stop strings must be a non-empty list of non-empty strings")
        self._stops = stops
        self._max_hold = max(len(s) for s in stops) - 1  # longest text that can be a proper prefix
        self._held = ""
        self.matched: str | None = None  # the stop string that ended the stream

    def feed(self, text: str) -> str:
        """Add new text; return what is safe to emit. After a match, returns '' for ever."""
        if self.matched is not None or not text:
            return ""
        buf = self._held + text
        first = -1
        for stop in self._stops:
            i = buf.find(stop)
            if i != -1 and (first == -1 or i < first):
                first, self.matched = i, stop
        if first != -1:
            self._held = ""
            return buf[:first]
        hold = self._partial_suffix(buf)
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold]

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        for n in range(min(len(buf), self._max_hold), 0, -1):
            tail = buf[-n:]
            if any(stop.startswith(tail) for stop in self._stops):
                return n
        return 0

    def flush(self) -> str:
        """The held-back text, at the end of a stream that did not match."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

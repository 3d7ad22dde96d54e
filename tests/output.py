"""What a test reads of its own process's output once Ray's log forwarding is taken out.

A driver connected to Ray prints its actors' and tasks' output and log lines on its own stdout and
stderr, prefixed with ``(ActorName pid=N)`` (coloured on a terminal). They arrive at any moment (a Serve
replica's access log once landed in the middle of a one-line error check), so a test that checks what
defakenet itself printed drops them first.
"""

from __future__ import annotations

import re

_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\((\S+ )?pid=\d+[^)]*\)")


def own_output(text: str) -> str:
    """``text`` without the lines Ray forwarded from other processes."""
    return "".join(line for line in text.splitlines(keepends=True) if not _FORWARDED.match(line))

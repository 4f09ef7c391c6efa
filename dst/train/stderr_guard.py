"""One sentence instead of a C++ log when ``jax.distributed`` ends a process whose peer died.

jaxlib's coordination client aborts the process (a fatal C++ log and a stack trace) when the service
reports a dead or silent peer, and offers no callback Python can use instead. :func:`install` routes
the process's stderr (file descriptor 2) through a small helper process (this file, run by path: no
JAX, no dst imports) that passes every line through until the distributed runtime logs its first
warning, error or fatal line. From that line on it holds every line (such a log message spans several
lines, and it is how a dying process's last output starts): when the process ends after a fatal line,
the helper prints one sentence instead (``joining`` until the process says it joined the others,
:func:`joined`, then ``gone``); when the process ended otherwise, it prints them as they were (or drops
them when the process already said ``error: ...`` itself). Lines that start with ``error: `` always pass.
The runtime's INFO lines (and other sources' logs, e.g. XLA's GPU client) never start holding. The
helper ignores SIGINT and SIGTERM and ends when stderr closes; its last sentence can come a moment after
the process itself has exited.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([\w.]+):\d+\]")
GLOG_INSIDE = re.compile(r"(?<=\S)[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.]+:\d+\]")
# Source files of jaxlib's distributed runtime (coordination service and agent, its client and service,
# preemption sync), matched whole: pjrt_client.cc or XLA's GPU clients are other sources.
COORDINATION = re.compile(r"^(coordination\w*|preemption\w*|client|service|distributed\w*)\.(h|cc)$")
NOISE = re.compile(r"^\[Gloo\] Rank \d+ is connected to \d+ peer ranks")
JOINED = "\x00dst: joined\n"    # what the process writes once it joined (not shown)


def is_fatal(line: str) -> bool:
    return (line.startswith("F") and bool(GLOG.match(line))) or any(
        s in line for s in ("Terminating process because", "terminate called", "Check failure stack trace"))


def filter_lines(lines, joining: str, gone: str):
    """The lines to show of ``lines`` (a process's stderr, ending when it exits)."""
    held, fatal, said, sentence = [], False, False, joining
    for line in _split(lines):
        if line == JOINED:
            sentence = gone
            continue
        said = said or line.startswith("error: ")
        match = GLOG.match(line)
        if held or (match and line[0] in "WEF" and COORDINATION.search(match.group(1))):
            held.append(line)
            fatal = fatal or is_fatal(line)
            if line.startswith("error: "):
                yield line
            continue
        if not NOISE.match(line):
            yield line
    if said:
        return
    if fatal:
        yield sentence + "\n"
    else:
        yield from held


def _split(lines):
    """``lines`` with a C++ log line that another thread wrote into the middle of a line on its own."""
    for line in lines:
        inside = GLOG_INSIDE.search(line)
        while inside:
            yield line[:inside.start()] + "\n"
            line = line[inside.start():]
            inside = GLOG_INSIDE.search(line, 1)
        yield line


def install(joining: str, gone: str) -> None:
    """Route this process's stderr through the helper (see the module docstring)."""
    read, write = os.pipe()
    original = os.dup(2)
    subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), joining, gone], stdin=read, stdout=original,
                     stderr=original, close_fds=True)
    os.close(read)
    os.close(original)
    sys.stderr.flush()
    os.dup2(write, 2)
    os.close(write)


def joined() -> None:
    """Tell the helper that the process joined the others (its sentence becomes ``gone``)."""
    sys.stderr.flush()
    os.write(2, JOINED.encode())


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdin.reconfigure(errors="replace")
    sys.stdout.reconfigure(errors="replace")
    out = sys.stdout
    for line in filter_lines(iter(sys.stdin.readline, ""), sys.argv[1], sys.argv[2]):
        out.write(line)
        out.flush()


if __name__ == "__main__":
    main()

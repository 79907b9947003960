"""A training run followed by the server: a thread looks at the run's model file every second
and, when the run wrote a new one (by rename, when validation improved), loads it in the
background while the engine keeps answering with the old one, then hands it to the engine,
which takes it between two batches.

A new file that does not load, or whose classes or input differ from the one served, is
refused with one warning line; the old model keeps answering.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from pawlab.serve.models import Served, Version

POLL = 1.0  # seconds between looks at the model file

Stamp = tuple[int, int, int]  # the file's inode, mtime_ns and size: a new file changes one


def stamp(path: Path) -> Stamp | None:
    """The model file's `Stamp`, or None while there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _reason(path: Path, exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if text.startswith(str(path)) else f"{path}: {text}"


class Follower:
    """Watches ``path``, the model file of a run ``served`` answers with (loaded when it had
    the stamp ``seen``), in a thread of its own until `stop`. ``who`` names the model in the
    lines it prints: one per swap (unless ``quiet``), one per refused file."""

    def __init__(self, served: Served, path: Path, seen: Stamp | None, who: str, quiet: bool) -> None:
        self.served, self.path, self.seen, self.who, self.quiet = served, path, seen, who, quiet
        self.poll = POLL
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"pawlab-follow-{served.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stopped.wait(self.poll):
            now = stamp(self.path)
            if now is not None and now != self.seen:
                self._take(now)

    def _take(self, now: Stamp) -> None:
        """Load the file now at ``path`` (stamped ``now``) and swap it in if it fits."""
        try:
            version = Version.load(self.path, self.served.loading)
        except Exception as exc:  # a damaged or foreign file, whatever it breaks: watching goes on
            self.seen = now
            self._refuse(_reason(self.path, exc))
            return
        if stamp(self.path) != now:
            return  # replaced again while it loaded: the next look takes the newer file
        self.seen = now
        misfit = self.served.version.misfit(version)
        if misfit is not None:
            self._refuse(f"{self.path}: {misfit}")
            return
        self.served.batcher.swap(version)
        if not self.quiet:
            print(
                f"pawlab serve: {self.who}: now answering with {self.path} (digest {version.digest[:8]}...)",
                file=sys.stderr,
                flush=True,
            )

    def _refuse(self, reason: str) -> None:
        still = self.served.digest[:8]
        print(
            f"pawlab serve: warning: {self.who}: {reason}; still answering with digest {still}...",
            file=sys.stderr,
            flush=True,
        )

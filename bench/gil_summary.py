"""Where a worker held the GIL: a summary of a py-spy raw profile (``trtbatch bench --py-spy FILE``).

    python bench/gil_summary.py FILE [--seconds S --rate R] [--top 25]

Prints one JSON line: the samples in all (with the bench line's ``py_spy`` seconds and rate, the
share of the time some thread of the worker held the GIL), and the share of them under each of our
functions (the innermost frame in workers/, common/, bench/ or producer/, so a library's time counts
for the call of ours that made it; ``main (workers/process/main.py)`` is Celery's consumer loop) and
under each leaf frame (where the time itself went).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

LINE = re.compile(r":\d+\)$")
OURS = re.compile(r"\((?:.*/)?(workers|common|bench|producer)/[^)]*\)")
WRAPPERS = re.compile(r"common/redisconn\.py")  # the retry around every Redis call: its caller is what counts


def summarise(text: str, top: int, seconds: float = 0.0, rate: int = 200) -> dict[str, object]:
    ours: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [LINE.sub(")", f) for f in stack.split(";")]  # a function's lines count together
        leaves[frames[-1]] += n
        mine = [f for f in frames if OURS.search(f) and not WRAPPERS.search(f)]
        ours[mine[-1] if mine else "(not under our code: " + _first_library_frame(frames) + ")"] += n

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(n / total, 4)) for name, n in counter.most_common(top)]
    held = {"gil_held_share": round(total / (seconds * rate), 3)} if seconds else {}
    return {"samples": total, **held, "by_our_function": shares(ours), "by_leaf": shares(leaves)}


def _first_library_frame(frames: list[str]) -> str:
    """The frame a thread not running our code is in, below the thread's start-up frames."""
    for frame in reversed(frames):
        if "threading.py" not in frame and "<frozen" not in frame:
            return frame
    return frames[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=0.0, help="the profile's seconds (bench line: py_spy)")
    parser.add_argument("--rate", type=int, default=200, help="its samples per second (bench line: py_spy)")
    args = parser.parse_args()
    print(json.dumps(summarise(Path(args.profile).read_text(), args.top, args.seconds, args.rate)))


if __name__ == "__main__":
    main()

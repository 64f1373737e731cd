"""Summarise a py-spy ``--format raw`` profile: where the samples of each thread went.

Usage::

    py-spy record --format raw --rate 250 -o .cache/profile.txt -- \\
        python -m tools.bench --rounds 1 --only publish
    python -m tools.bench.stacks .cache/profile.txt --thread spakky-rabbitmq-publisher
"""

import argparse
import sys
from collections import Counter
from pathlib import Path


def summarise(path: Path, thread: str | None, top: int) -> str:
    """Self and inclusive sample counts per function, for threads matching ``thread``."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if thread is not None and thread not in frames[0]:
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
    lines = [f"{total} samples"]
    for title, counter in (("self", own), ("inclusive", inclusive)):
        lines.append(f"-- {title}")
        for frame, count in counter.most_common(top):
            lines.append(f"{100 * count / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def main() -> int:
    """Print the summary of one profile file."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.stacks")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--thread", help="only threads whose name contains this")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarise(args.profile, args.thread, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

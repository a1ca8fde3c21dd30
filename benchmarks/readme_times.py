"""The documentation's stated times against a run measured now, and the machine it ran on.

    .venv/bin/python benchmarks/readme_times.py [--long]

Runs the runnable blocks of README.md and docs/ in order in a temporary clone, as tests/test_docs.py does, and times
every command. A command whose comment states a time ("about 15 s", "under a minute", "51 s", "2 minutes")
is compared with it, and so is the demo run of the README's first section ("About N s on 2 CPU cores");
a stated time holds when the measured one is within 1.5x of it ("under": at most 1.5x). The machine is
printed first (CPU, cores, load average, fp32 matmul rate): on a loaded machine every command takes
longer, by about the load over the cores. Takes ~8 minutes on 2 idle cores (needs ../shared). `--long`
also runs the blocks the README test skips for their length ("... minutes on 2 cores": ~80 minutes more).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_docs import BLOCKS, DEMO, README, make_clone, script, shell  # noqa: E402

TOLERANCE = 1.5
STATED = re.compile(r"\b(about|under|~)?\s*(a|\d+(?:\.\d+)?)\s*(s|seconds?|minutes?|min)\b", re.IGNORECASE)


def stated(comment: str) -> tuple[float, str] | None:
    """(seconds, "about" | "under") a comment states, or None: "about 15 s", "under a minute", "51 s"."""
    found = STATED.search(comment)
    if found is None:
        return None
    word, number, unit = found.groups()
    seconds = (1.0 if number == "a" else float(number)) * (60 if unit.lower().startswith("m") else 1)
    return seconds, "under" if (word or "").lower() == "under" else "about"


def demo_claim() -> tuple[float, str] | None:
    """The demo's time as the README's first section states it ("About 16 s on 2 CPU cores")."""
    found = re.search(r"About (\d+(?:\.\d+)?) s on 2 CPU cores", README.read_text(encoding="utf-8"))
    return (float(found.group(1)), "about") if found else None


def machine() -> str:
    """CPU model, cores, load average and a measured fp32 matmul rate."""
    import torch

    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    a = torch.randn(1024, 1024)
    a @ a
    t0, runs = time.perf_counter(), 0
    while time.perf_counter() - t0 < 2:
        a @ a
        runs += 1
    rate = runs * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}; {os.cpu_count()} cores; load average {load}; fp32 matmul {rate:.0f} GFLOP/s"


def verdict(seconds: float, claim: tuple[float, str] | None) -> str:
    if claim is None:
        return ""
    ratio = seconds / claim[0]
    holds = ratio <= TOLERANCE and (claim[1] == "under" or ratio >= 1 / TOLERANCE)
    said = f"{claim[1]} {claim[0]:g} s"
    return f"{said:>16} {ratio:5.2f}x {'ok' if holds else 'OFF'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="also the blocks skipped for their length")
    long = parser.parse_args().long
    print(f"machine: {machine()}", flush=True)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_clone(Path(tmp))
        t0 = time.perf_counter()
        out = shell(repo, DEMO)
        rows.append(("README.md " + DEMO, time.perf_counter() - t0, verdict(time.perf_counter() - t0, demo_claim())))
        if out.returncode != 0:
            raise SystemExit(f"the demo run failed:\n{out.stderr[-2000:]}")
        print(f"{rows[-1][1]:7.1f} s  {rows[-1][0][:70]}  {rows[-1][2]}", flush=True)
        for block in BLOCKS:
            if block.skip is not None and not (long and "on 2 cores" in block.skip):
                continue
            for cmd in block.commands:
                t0 = time.perf_counter()
                out = shell(repo, script(block, cmd))
                seconds = time.perf_counter() - t0
                comment = cmd.text.split("#", 1)[1] if "#" in cmd.text else ""
                first = cmd.text.splitlines()[0].split("#")[0].strip()
                rows.append((f"{block.page}:{cmd.line} {first}", seconds, verdict(seconds, stated(comment))))
                print(f"{seconds:7.1f} s  {rows[-1][0][:70]}  {rows[-1][2]}  (exit {out.returncode})", flush=True)
    checked = [r for r in rows if r[2]]
    off = [r for r in checked if r[2].endswith("OFF")]
    total = sum(r[1] for r in rows)
    print(f"\n{len(rows)} commands in {total:.0f} s; {len(checked)} stated times, {len(off)} off by more than 1.5x")
    for name, seconds, said in off:
        print(f"  {name[:60]}: measured {seconds:.1f} s, the docs say {said}")


if __name__ == "__main__":
    main()

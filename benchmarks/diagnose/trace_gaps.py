"""Where the GPU waits on the host: each idle gap between kernels charged to the Python stack
that launched the kernel ending it. Prints, per trace, the frames by inclusive idle time and the
largest gaps with their stacks. Usage: gaps.py trace.json.gz [...]"""

import gzip
import json
import sys
from collections import defaultdict

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
RUNTIME_CATS = ("cuda_runtime", "cuda_driver")
SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def short(name: str) -> str:
    for cut in ("site-packages/", "/tmp/site/", "lowres_ft/", "benchmarks/"):
        if cut in name:
            return (
                name.split(cut, 1)[1]
                if cut.endswith("/") and cut != "lowres_ft/"
                else name[name.index(cut) :]
            )
    return name[-90:]


def stacks_at(py_events, times):
    """Python frames open at each of `times` (sorted), on one thread: nested intervals."""
    py_events = sorted(py_events, key=lambda e: (e[0], -e[1]))
    out, stack, i = [], [], 0
    for t in times:
        while i < len(py_events) and py_events[i][0] <= t:
            start, end, name = py_events[i]
            while stack and stack[-1][1] <= start:
                stack.pop()
            stack.append((start, end, name))
            i += 1
        while stack and stack[-1][1] <= t:
            stack.pop()
        out.append([s[2] for s in stack if s[1] > t])
    return out


def analyse(path: str, top: int = 45) -> None:
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        events = json.load(f)["traceEvents"]
    gpu = sorted(
        (e for e in events if e.get("ph") == "X" and e.get("cat") in GPU_CATS),
        key=lambda e: e["ts"],
    )
    launches = {}
    syncs = []
    py = defaultdict(list)
    for e in events:
        if e.get("ph") != "X":
            continue
        cat = e.get("cat")
        if cat in RUNTIME_CATS:
            corr = e.get("args", {}).get("correlation")
            if corr is not None:
                launches[corr] = e
            if e["name"] in SYNC_NAMES:
                syncs.append(e)
        elif cat == "python_function":
            py[e["tid"]].append((e["ts"], e["ts"] + e["dur"], e["name"]))
    wall = gpu[-1]["ts"] + gpu[-1]["dur"] - gpu[0]["ts"]
    busy_end, gaps = None, []
    for k in gpu:
        if busy_end is not None and k["ts"] > busy_end:
            corr = k.get("args", {}).get("correlation")
            gaps.append((k["ts"] - busy_end, k, launches.get(corr)))
        busy_end = k["ts"] + k["dur"] if busy_end is None else max(busy_end, k["ts"] + k["dur"])
    total_gap = sum(g for g, _, _ in gaps)
    print(
        f"== {path}\n   GPU window {wall / 1e3:.1f} ms, idle {total_gap / 1e3:.1f} ms "
        f"in {len(gaps)} gaps; {len(gpu)} GPU events; {len(syncs)} syncs"
    )
    # stacks at each gap's launch, per thread
    queries = defaultdict(list)
    for index, (_, _, launch) in enumerate(gaps):
        if launch is not None:
            queries[launch["tid"]].append((launch["ts"], index))
    stack_of = {}
    for tid, items in queries.items():
        items.sort()
        found = stacks_at(py.get(tid, []), [t for t, _ in items])
        for (_, index), frames in zip(items, found, strict=False):
            stack_of[index] = frames
    inclusive = defaultdict(float)
    exclusive = defaultdict(float)
    unattributed = 0.0
    for index, (gap, _, _) in enumerate(gaps):
        frames = stack_of.get(index)
        if not frames:
            unattributed += gap
            continue
        for name in dict.fromkeys(short(f) for f in frames):
            inclusive[name] += gap
        exclusive[short(frames[-1])] += gap
    print(f"   unattributed {unattributed / 1e3:.1f} ms")
    print("   -- frames by GPU idle time charged to launches under them (inclusive, ms):")
    for name, t in sorted(inclusive.items(), key=lambda x: -x[1])[:top]:
        print(f"   {t / 1e3:8.2f}  {name}")
    print("   -- innermost frame (exclusive, ms):")
    for name, t in sorted(exclusive.items(), key=lambda x: -x[1])[:20]:
        print(f"   {t / 1e3:8.2f}  {name}")
    print("   -- largest gaps:")
    for index in sorted(range(len(gaps)), key=lambda i: -gaps[i][0])[:12]:
        gap, kernel, launch = gaps[index]
        frames = [short(f) for f in stack_of.get(index, [])]
        interesting = [f for f in frames if "torch/" not in f or "autograd" in f][-7:]
        print(
            f"   {gap / 1e3:7.2f} ms before {kernel['name'][:50]!r} launched by "
            f"{launch['name'] if launch else '?'}"
        )
        for f in interesting:
            print(f"        {f}")
    if syncs and py:
        tid_sync = defaultdict(list)
        for s in syncs:
            tid_sync[s["tid"]].append(s)
        where = defaultdict(lambda: [0, 0.0])
        for tid, items in tid_sync.items():
            items.sort(key=lambda e: e["ts"])
            found = stacks_at(py.get(tid, []), [s["ts"] for s in items])
            for s, frames in zip(items, found, strict=False):
                key = " < ".join([short(f) for f in frames if "torch/" not in f][-3:][::-1])
                where[key][0] += 1
                where[key][1] += s["dur"]
        print("   -- syncs (count, ms waited) by caller:")
        for key, (n, t) in sorted(where.items(), key=lambda x: -x[1][1])[:12]:
            print(f"   {n:5d} {t / 1e3:8.2f}  {key}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        try:
            analyse(p)
        except Exception as error:  # one bad trace must not hide the others
            print(f"== {p}: {type(error).__name__}: {error}")

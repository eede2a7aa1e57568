"""What a number of held connections added to a heap, by allocation site: compares two
detailed massif snapshots (valgrind's `detailed_snapshot` monitor command), taken
before and while COUNT connections were held, and prints a markdown table of the bytes
per connection each site added. Sites that moved by less than 16 bytes per connection
are summed in one row: with a hundred connections, those are mostly the proxy's one-off
allocations (a table that grew once) rather than something each connection holds.

    python3 bench/lib/heap_sites.py BEFORE.ms HELD.ms COUNT [FRAMES]

A site is named by its first FRAMES (3) frames outside the allocator and the standard
library, innermost first.
"""
import re
import sys


def parse(path):
    """The snapshot's heap tree: {'bytes', 'frame', 'children'} nodes."""
    root, stack = None, []
    with open(path) as f:
        lines = iter(f.read().splitlines())
    extra = 0
    for line in lines:
        if line.startswith("mem_heap_extra_B="):
            extra = int(line.split("=")[1])
        if line.startswith("n") and "heap allocation functions" in line:
            break
    else:
        raise SystemExit(f"{path}: no detailed heap tree (taken with detailed_snapshot?)")
    for line in [line, *lines]:
        m = re.match(r"^( *)n\d+: (\d+) (.*)$", line)
        if not m:
            break
        depth = len(m.group(1))
        node = {"bytes": int(m.group(2)), "frame": m.group(3), "children": []}
        if depth == 0:
            root = node
        else:
            stack[depth - 1]["children"].append(node)
        del stack[depth:]
        stack.append(node)
    return root, extra


# Frames that only say "this allocates": the allocator, collections, smart pointers.
NOISE = re.compile(
    r"UnknownInlinedFun|library/(alloc|std|core)/|in \d+ places|below massif's threshold"
    r"|/(raw_vec|vec_deque|bytes_mut|boxed)\.rs|^0x[0-9A-F]+: (__rdl_|__rust_)?(alloc|allocate|"
    r"new|with_capacity|reserve|grow|malloc|realloc|calloc)\b"
)


def name(frame):
    frame = re.sub(r"^0x[0-9A-F]+: ", "", frame)
    # Generic arguments: <...> however deep.
    while True:
        shorter = re.sub(r"<[^<>]*>", "", frame)
        if shorter == frame:
            break
        frame = shorter
    frame = re.sub(r"\(/[^)]*/(src/[^)]*)\)", r"(\1)", frame)
    return frame[:100]


def sites(node, path, out, frames):
    if not NOISE.search(node["frame"]):
        path = path + [name(node["frame"])]
    key = " ← ".join(path[:frames]) or "(no frame outside the allocator)"
    if len(path) >= frames or not node["children"]:
        out[key] = out.get(key, 0) + node["bytes"]
        return
    rest = node["bytes"] - sum(c["bytes"] for c in node["children"])
    if rest:
        out[key] = out.get(key, 0) + rest
    for child in node["children"]:
        sites(child, path, out, frames)


def main():
    before, held, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    frames = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    (a, a_extra), (b, b_extra) = parse(before), parse(held)
    sa, sb = {}, {}
    for child in a["children"]:
        sites(child, [], sa, frames)
    for child in b["children"]:
        sites(child, [], sb, frames)
    per = {k: (sb.get(k, 0) - sa.get(k, 0)) / count for k in set(sa) | set(sb)}
    print(
        f"Heap: {a['bytes']:,} → {b['bytes']:,} bytes with {count:,} connections: "
        f"{(b['bytes'] - a['bytes']) / count:,.0f} bytes per connection, plus "
        f"{(b_extra - a_extra) / count:,.0f} of malloc's own (headers, alignment)."
    )
    print()
    print("| bytes per connection | site (innermost first) |")
    print("|---|---|")
    shown = 0
    for key, value in sorted(per.items(), key=lambda kv: -abs(kv[1])):
        if abs(value) < 16:
            break
        print(f"| {value:,.0f} | {key.replace('|', '/')} |")
        shown += value
    print(f"| {(b['bytes'] - a['bytes']) / count - shown:,.0f} | (sites under 16 bytes each) |")


main()

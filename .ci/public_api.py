#!/usr/bin/env python3
"""Lists every type, trait and function of another crate that bus-core's public API exposes, and
fails when one is not in the allow-list (.ci/public-api-external.txt).

Reads the rustdoc JSON of bus-core (`cargo +nightly rustdoc -p bus-core --all-features -- -Z
unstable-options --output-format json`). Walks the public items from the crate root (modules,
re-exports, structs with their public fields, enums, traits, functions, and the impls of public
types, except auto-trait and blanket impls) and collects every path that resolves into another
crate. std, core and alloc are always allowed.

Usage: public_api.py <bus_core.json> <allow-list> [--print]
"""
import json
import sys

ALWAYS = {"std", "core", "alloc"}
# Keys whose values are lists of child item ids, walked as items of their own.
CHILD_LISTS = ("items", "impls", "fields", "variants", "implementations")


def main():
    doc_path, allow_path = sys.argv[1], sys.argv[2]
    print_all = "--print" in sys.argv[3:]
    d = json.load(open(doc_path))
    index, paths = d["index"], d["paths"]
    crates = {int(k): v["name"] for k, v in d["external_crates"].items()}
    crates[0] = "bus_core"

    found = {}  # external path -> first public item that exposes it

    def path_of(pid):
        p = paths.get(str(pid))
        if p is None:
            return None
        return crates.get(p["crate_id"], "?"), "::".join(p["path"])

    def scan(node, where):
        if isinstance(node, dict):
            if "id" in node and ("path" in node or "name" in node) and "args" in node:
                r = path_of(node["id"])
                if r and r[0] != "bus_core" and r[0] not in ALWAYS:
                    found.setdefault(r[1], where)
            for k, v in node.items():
                if k in CHILD_LISTS:
                    continue
                scan(v, where)
        elif isinstance(node, list):
            for v in node:
                scan(v, where)

    seen = set()
    stack = [(str(d["root"]), "")]
    while stack:
        iid, where = stack.pop()
        if iid in seen or iid not in index:
            continue
        seen.add(iid)
        item = index[iid]
        inner = item["inner"]
        kind = next(iter(inner))
        body = inner[kind]
        name = item.get("name") or where
        here = (f"{where}::{name}" if where else name) if kind != "impl" else where
        if kind == "impl":
            if body.get("is_synthetic") or body.get("blanket_impl") is not None:
                continue
        elif kind == "use":
            if body.get("id") is not None:
                stack.append((str(body["id"]), where))
            continue
        elif item["visibility"] not in ("public", "default"):
            # "default" is how trait items, impl items and variants appear; private items are
            # stripped from the JSON already.
            continue
        scan(body, here)
        if isinstance(body, dict):
            for key in CHILD_LISTS:
                for child in body.get(key) or []:
                    stack.append((str(child), here))
            kind_body = body.get("kind")
            if isinstance(kind_body, dict):
                for v in kind_body.values():
                    if isinstance(v, dict):
                        for child in v.get("fields") or []:
                            stack.append((str(child), here))
                    elif isinstance(v, list):
                        for child in v:
                            if child is not None:
                                stack.append((str(child), here))

    allowed = set()
    for line in open(allow_path):
        line = line.split("#", 1)[0].strip()
        if line:
            allowed.add(line)
    bad = sorted(p for p in found if p not in allowed)
    if print_all:
        for p in sorted(found):
            print(f"{p}    # {found[p]}")
    for p in bad:
        print(f"not allowed in the public API: {p} (exposed by {found[p]})")
    stale = sorted(allowed - set(found))
    for p in stale:
        print(f"allowed but no longer exposed (remove it from the list): {p}")
    if bad or stale:
        sys.exit(1)
    print(f"public API: {len(found)} external paths, all allowed")


if __name__ == "__main__":
    main()

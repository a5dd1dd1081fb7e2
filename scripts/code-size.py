#!/usr/bin/env python3
"""Structure report: non-test code lines per file (no blanks or comments) and the longest
functions in src/ (by brace matching, so approximate). Usage: scripts/code-size.py [DIR];
TOP and TOPF set how many files and functions are listed."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "src"
files = []
funcs = []
fn_re = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"C"\s+)?fn\s+(\w+)')
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs"): continue
        p = os.path.join(d, f)
        lines = open(p).read().split("\n")
        # strip #[cfg(test)] mod ... { } blocks
        keep = []
        i = 0
        while i < len(lines):
            if lines[i].strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r'\s*(pub\s+)?mod\s+\w+\s*\{', lines[i+1]):
                depth = 0; j = i + 1
                while j < len(lines):
                    depth += lines[j].count("{") - lines[j].count("}")
                    if depth == 0 and "{" in "".join(lines[i+1:j+1]): break
                    j += 1
                i = j + 1
                continue
            keep.append((i, lines[i])); i += 1
        n = sum(1 for _, l in keep if l.strip() and not l.strip().startswith("//"))
        files.append((n, len(lines), p))
        # functions
        for k, (ln, l) in enumerate(keep):
            m = fn_re.match(l)
            if not m: continue
            depth = 0; started = False
            for k2 in range(k, len(keep)):
                t = keep[k2][1]
                if not started and ";" in t and "{" not in t: break
                depth += t.count("{") - t.count("}")
                if "{" in t: started = True
                if started and depth <= 0:
                    funcs.append((keep[k2][0] - ln + 1, f"{p}:{ln+1}", m.group(7)))
                    break
files.sort(reverse=True)
print("non-test code lines (no blanks/comments), total lines, file")
for n, t, p in files[:int(os.environ.get("TOP", "15"))]:
    print(f"{n:6} {t:6}  {p}")
funcs.sort(reverse=True)
print("\nlongest functions (lines)")
for n, p, name in funcs[:int(os.environ.get("TOPF", "20"))]:
    print(f"{n:6}  {name}  {p}")

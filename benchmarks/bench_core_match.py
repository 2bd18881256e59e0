"""Per-request cost of reading the URI and choosing a location as nginx does, in one process.

    python benchmarks/bench_core_match.py

What the core added to each request for nginx's semantics: parsing the raw target
(``ngx_http_parse_complex_uri``: %-decoding, ``.``/``..``, 400s) and PCRE2 regexes on bytes.
Baselines measured in the same run: the normalisation the core did before (``posixpath`` on
the already-decoded PATH_INFO), and the same regexes with Python's ``re`` on ``str`` (which
differs from nginx on POSIX classes, ``\\Z``, ``\\w`` and more, hence PCRE2).
"""

from __future__ import annotations

import posixpath
import re
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

from ngxsim.core.http.location import LocationMatcher, parse_location  # noqa: E402
from ngxsim.core.http.uri import parse_path  # noqa: E402

ROUNDS, NUMBER = 5, 20000


def old_normalize(path: str) -> str:
    """The core's URI normalisation before nginx's parser (the baseline)."""
    if not path:
        return "/"
    if "//" not in path and "/." not in path:
        return path
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if path.endswith("/") and norm != "/":
        norm += "/"
    return norm


def per_call_us(fn) -> float:
    # the best round: the machine is shared, and a slower round measures the neighbours
    return min(t / NUMBER * 1e6 for t in timeit.repeat(fn, number=NUMBER, repeat=ROUNDS))


def main() -> None:
    rows = []
    for label, raw in (("plain /api/v1/items?x=1", b"/api/v1/items?x=1"),
                       ("complex //a/./b/../c%20d", b"//a/./b/../c%20d")):
        text = raw.decode().split("?")[0]
        base = per_call_us(lambda: old_normalize(text))
        new = per_call_us(lambda: parse_path(raw))
        rows.append([f"URI {label}", f"{base:.2f}", f"{new:.2f}", f"+{new - base:.2f}"])

    patterns = [rf"^/r{i}/(\d+)\.json$" for i in range(9)] + [r"^/last/(\d+)/(?<word>\w+)$"]
    matcher = LocationMatcher()
    for p in patterns:
        matcher.add(parse_location(["~", p]), p)
    compiled = [re.compile(p.replace("(?<", "(?P<")) for p in patterns]
    uri, raw = "/last/42/hello", b"/last/42/hello"

    def with_re():
        for rx in compiled:
            m = rx.search(uri)
            if m:
                return m.groups()
        return None

    base = per_call_us(with_re)
    new = per_call_us(lambda: matcher.find(uri, raw))
    rows.append(["10 regex locations, last matches", f"{base:.2f}", f"{new:.2f}", f"+{new - base:.2f}"])
    print(table(f"per request, us (best of {ROUNDS} x {NUMBER})",
                ["work", "baseline (old core / Python re)", "nginx's (ngxsim now)", "added"], rows))


if __name__ == "__main__":
    main()

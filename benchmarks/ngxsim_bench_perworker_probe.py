"""Benchmark module for bench_healthchecks.py: the naive design healthchecks avoids.

``bench_perworker_probe INTERVAL URL...;`` (main): every worker runs its own thread that GETs each
URL every INTERVAL — what a health checker without an instance-wide job does (one prober per
worker process, like per-worker timers in lua-resty-healthcheck without a shared lock). It
exists to measure the probe load of that design in the same run as healthchecks'.
"""

from __future__ import annotations

import threading
import urllib.request

from ngxsim import MAIN, Directive, hookimpl, parse_time

_STOP = threading.Event()


def _parse(args: list[str]):
    return parse_time(args[0]), list(args[1:])


@hookimpl
def ngxsim_directives(register):
    register(Directive("bench_perworker_probe", (MAIN,), (2, None), parse=_parse))


@hookimpl
def ngxsim_init_worker(runtime):
    setting = runtime.config.main["bench_perworker_probe"]
    if setting:
        threading.Thread(target=_probe, args=setting, daemon=True, name="bench-perworker-probe").start()


def _probe(interval: float, urls: list[str]) -> None:
    while not _STOP.wait(interval):
        for url in urls:
            try:
                urllib.request.urlopen(url, timeout=interval).close()
            except OSError:
                pass


@hookimpl
def ngxsim_exit_worker(runtime):
    _STOP.set()

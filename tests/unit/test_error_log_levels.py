"""nginx's error log levels and line format (ngxsim.core.http.logs): ``notice`` is a level of
its own between INFO and WARNING, and every line reads ``YYYY/MM/DD HH:MM:SS [level] PID#TID:``."""

from __future__ import annotations

import logging
import os
import re
import threading

from ngxsim import ALERT, EMERG, NOTICE
from ngxsim.core.http.logs import log, nginx_level, set_connection, setup_error_log


def test_every_nginx_level_has_its_python_level_and_back():
    pairs = {logging.DEBUG: "debug", logging.INFO: "info", NOTICE: "notice", logging.WARNING: "warn",
             logging.ERROR: "error", logging.CRITICAL: "crit", ALERT: "alert", EMERG: "emerg"}
    assert {level: nginx_level(level) for level in pairs} == pairs
    assert logging.INFO < NOTICE < logging.WARNING


def test_lines_in_nginx_format_filtered_at_the_configured_level(tmp_path):
    path = tmp_path / "error.log"
    setup_error_log((str(path), "notice"))
    try:
        log.info("not written at notice")
        log.log(NOTICE, "a notice")
        set_connection(42)
        log.warning("a warning of connection 42")
        set_connection(None)
        log.log(EMERG, "an emerg")
    finally:
        setup_error_log(("stderr", "notice"))
    lines = path.read_text().splitlines()
    ids = f"{os.getpid()}#{threading.get_native_id()}"
    stamp = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d"
    assert [re.sub(stamp, "T", line) for line in lines] == [
        f"T [notice] {ids}: a notice", f"T [warn] {ids}: *42 a warning of connection 42", f"T [emerg] {ids}: an emerg"]

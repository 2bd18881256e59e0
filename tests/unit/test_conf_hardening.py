"""Configuration input that used to end in a traceback: each is now a ConfigError with file and line."""

from __future__ import annotations

import os

import pytest

from ngxsim import MAX_ZONE_SIZE, ConfigError
from ngxsim.core.conf.loader import MAX_BLOCK_DEPTH, load_configuration
from ngxsim.core.conf.parser import MAX_FILE_SIZE, parse_file


def error(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_configuration("/p/a.conf", text=text)
    return str(err.value)


def file_error(path) -> str:
    with pytest.raises(ConfigError) as err:
        load_configuration(str(path))
    return str(err.value)


# -- nesting ----------------------------------------------------------------------------------


def test_a_thousand_nested_blocks_are_an_unknown_directive_as_in_nginx():
    assert error("x {\n" * 5000 + "}\n" * 5000) == 'unknown directive "x" in /p/a.conf:1'
    # unclosed: nginx checks each directive as it reads it, so "x" is unknown before the file ends
    assert error("x {" * 1000) == 'unknown directive "x" in /p/a.conf:1'


def test_a_thousand_unclosed_valid_blocks_are_an_end_of_file_error():
    # each block is valid as it is read: what real nginx 1.22 says (with its "events {}" line first)
    text = "http {\nserver {\n" + "location / {\n" * 28
    assert error(text) == 'unexpected end of file, expecting "}" in /p/a.conf:31'  # nginx counts the last line
    # deeper than ngxsim's bound on nesting (nginx has none): the bound, where it is crossed
    deep = "http {\nserver {\n" + "location / {\n" * 998
    assert error(deep) == f'"location" block is nested deeper than {MAX_BLOCK_DEPTH} levels in /p/a.conf:{MAX_BLOCK_DEPTH + 1}'


def test_a_block_directive_nesting_itself_is_bounded():
    inner = "t_nest {\n" * (MAX_BLOCK_DEPTH + 5) + "}\n" * (MAX_BLOCK_DEPTH + 5)
    message = error(f"load_module ngxsim_test_nest;\nhttp {{\n server {{\n{inner} }}\n}}\n")
    # main -> http -> server -> t_nest...: the block that crosses the bound is named at its line
    assert message == f'"t_nest" block is nested deeper than {MAX_BLOCK_DEPTH} levels in /p/a.conf:{4 + MAX_BLOCK_DEPTH - 2}'
    ok = "t_nest {\n" * 10 + "}\n" * 10
    load_configuration("/p/a.conf", text=f"load_module ngxsim_test_nest;\nhttp {{\n server {{\n{ok} }}\n}}\n")


# -- regular expressions ----------------------------------------------------------------------


@pytest.mark.parametrize("line, words", [
    ('location ~ "a{99999999999}" { }', "number too big in {} quantifier"),
    ('location ~* "(" { }', "missing closing parenthesis"),
    ('location ~ "' + "(" * 1000 + ")" * 1000 + '" { }', "too deeply nested"),
    ('server_name "~a{4294967296}";', "number too big in {} quantifier"),
    ('server_name "~' + "(" * 1000 + ")" * 1000 + '";', "too deeply nested"),
])
def test_regexes_python_cannot_compile_are_config_errors(line, words):
    message = error(f"http {{\n server {{\n  listen 80;\n  {line}\n }}\n}}\n")
    assert words in message and message.endswith("in /p/a.conf:4")


def test_a_server_name_regex_is_used_as_written_not_lower_cased():
    config = load_configuration("/p/a.conf", text=(
        "http {\n server { listen 127.0.0.1:80; server_name first; return 200 first; }\n"
        "  server { listen 127.0.0.1:80; server_name ~^x\\D$; return 200 regex; }\n}\n"))
    table = config.stash["core.http"].servers
    # \D (not a digit) lower-cased would be \d (a digit)
    assert table.select("127.0.0.1", 80, "xa")["return"].text.source == "regex"
    assert table.select("127.0.0.1", 80, "x1")["return"].text.source == "first"


# -- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("line, message", [
    ("t_time 1" + "0" * 400 + "ms;", '"t_time" directive invalid value "1' + "0" * 400 + 'ms": must be from 0 to 2147483647 seconds'),
    ("t_time 69y;", '"t_time" directive invalid value "69y": must be from 0 to 2147483647 seconds'),
    ("t_size 99999999999999999999g;", '"t_size" directive invalid value "99999999999999999999g": must be from 0 to 9223372036854775807 bytes'),
    ("t_number 2147483648;", '"t_number" directive invalid value "2147483648": must be from 0 to 2147483647'),
    ("t_number \u0661\u0662;", '"t_number" directive invalid value "\u0661\u0662"'),  # Arabic-Indic digits
    ("t_size \u0661k;", '"t_size" directive invalid value "\u0661k"'),
])
def test_values_out_of_range_or_not_ascii_digits(line, message):
    assert error(f"load_module ngxsim_test_values;\nhttp {{\n {line}\n}}") == f"{message} in /p/a.conf:3"


def test_a_number_of_thousands_of_digits_is_out_of_range():
    message = error("load_module ngxsim_test_values;\nhttp {\n t_number " + "9" * 5000 + ";\n}")
    assert message.endswith(": must be from 0 to 2147483647 in /p/a.conf:3")


def test_the_largest_values_in_range_are_accepted():
    config = load_configuration("/p/a.conf", text="load_module ngxsim_test_values;\nhttp {\n t_time 2147483647;\n"
                                " t_size 9223372036854775807;\n t_number 2147483647;\n}")
    http = config.blocks("http")[0]
    assert (http["t_time"], http["t_size"], http["t_number"]) == (2147483647.0, 2**63 - 1, 2**31 - 1)


@pytest.mark.parametrize("conf, words", [
    ("load_module worker_events;\nhttp {\n worker_events_gil_switch_interval 1" + "0" * 400 + "ms;\n}",
     "must be from 0 to 1 seconds in /p/a.conf:3"),
    ("load_module worker_events;\nhttp {\n worker_events_zone bus 99999999999999999999g;\n}",
     f"must be from 1 to {MAX_ZONE_SIZE} bytes in /p/a.conf:3"),
    ("load_module worker_events;\nhttp {\n worker_events_zone bus 1025g;\n}", "in /p/a.conf:3"),
    ("load_module worker_events;\nhttp {\n worker_events_ring_size " + "9" * 5000 + ";\n}", "from 1 to"),
    ("load_module worker_events;\nhttp {\n worker_events_page_size " + "9" * 5000 + ";\n}", "from 1 to"),
    ("load_module worker_events;\nhttp {\n worker_events_page_size \u0661;\n}", "from 1 to"),
    ("worker_processes 1025;", "at most 1024 in /p/a.conf:1"),
    ("worker_processes " + "9" * 5000 + ";", "at most 1024 in /p/a.conf:1"),
    ("worker_processes \u0662;", '"worker_processes" directive invalid value in /p/a.conf:1'),
    ("worker_threads 99999999999999999999999;", "from 1 to 1024 in /p/a.conf:1"),
    ("http {\n server {\n  listen 127.0.0.1:" + "9" * 5000 + ";\n }\n}", "invalid port"),
    ("http {\n server {\n  listen [::1]:999999;\n }\n}", "invalid port"),
    ("http {\n server {\n  listen \u0661\u0662;\n }\n}", "in /p/a.conf:3"),
    ("http {\n server {\n  return \u0662\u0660\u0660;\n }\n}", "invalid return code"),
])
def test_directive_values_with_a_range_of_their_own(conf, words):
    assert words in error(conf)


# -- files ------------------------------------------------------------------------------------


def test_a_device_is_refused_without_reading_it():
    assert file_error("/dev/zero") == '"/dev/zero" is not a regular file'


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    assert file_error(fifo) == f'"{fifo}" is not a regular file'


def test_a_directory_is_refused(tmp_path):
    assert file_error(tmp_path) == f'open() "{tmp_path}" failed (21: Is a directory)'


def test_a_file_over_the_size_bound_is_refused(tmp_path):
    big = tmp_path / "big.conf"
    with open(big, "wb") as fh:
        fh.truncate(MAX_FILE_SIZE + 1)  # sparse: costs no disk
    assert file_error(big) == f'"{big}" is larger than {MAX_FILE_SIZE} bytes'


def test_include_of_a_directory_names_the_include_line(tmp_path):
    (tmp_path / "sub").mkdir()
    main = tmp_path / "main.conf"
    main.write_text("worker_processes 1;\ninclude sub;\n")
    assert file_error(main) == f'open() "{tmp_path / "sub"}" failed (21: Is a directory) in {main}:2'


def test_include_of_a_missing_or_unreadable_file_names_the_include_line(tmp_path):
    main = tmp_path / "main.conf"
    main.write_text("\n\ninclude /dev/zero;\n")
    assert file_error(main) == f'"/dev/zero" is not a regular file in {main}:3'
    main.write_text("include nope.conf;\n")
    assert file_error(main) == f'open() "{tmp_path / "nope.conf"}" failed (2: No such file or directory) in {main}:1'


def test_invalid_utf8_names_its_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_bytes(b"worker_processes 1;\n# caf\xe9\nhttp { }\n")
    assert file_error(conf) == f"invalid UTF-8 (byte 0xe9: invalid continuation byte) in {conf}:2"
    main = tmp_path / "main.conf"
    main.write_text("include bad.conf;\n")
    assert file_error(main) == f"invalid UTF-8 (byte 0xe9: invalid continuation byte) in {conf}:2"


def test_parse_file_reads_a_regular_file(tmp_path):
    conf = tmp_path / "ok.conf"
    conf.write_text("worker_processes 2;\n")
    assert [s.name for s in parse_file(str(conf))] == ["worker_processes"]


# -- line numbers -----------------------------------------------------------------------------


def test_line_numbers_after_a_variable_or_a_string_spanning_lines():
    assert error("http {\n add_header X a${\nuri\n\n};\n nope;\n}") == 'unexpected "}" in /p/a.conf:5'
    assert error('http {\n add_header X "a${uri}\n\n";\n nope;\n}') == 'unknown directive "nope" in /p/a.conf:5'

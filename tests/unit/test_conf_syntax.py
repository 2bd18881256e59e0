"""The tokenizer and parser: nginx's syntax and its error messages with file and line."""

from __future__ import annotations

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.lexer import tokenize
from ngxsim.core.conf.loader import load_configuration
from ngxsim.core.conf.parser import parse_file, parse_text


def words(text):
    return [t.value for t in tokenize(text, "t.conf")]


def test_tokens_comments_and_specials():
    assert words("a b;# c ; d\n{ e }") == ["a", "b", ";", "{", "e", "}"]


def test_quotes_and_escapes():
    assert words(r'''x "a b" 'c"d' "e\"f" "g\nh" 'i\'j' "k\\l";''') == [
        "x", "a b", 'c"d', 'e"f', "g\nh", "i'j", "k\\l", ";"]


def test_backslash_of_a_regex_survives():
    assert words(r"location ~ \.php$ {}")[2] == r"\.php$"


def test_quoted_special_characters_are_words():
    toks = list(tokenize('return 200 "}{;";', "t.conf"))
    assert [t.value for t in toks] == ["return", "200", "}{;", ";"]
    assert toks[2].quoted and not toks[2].special


def test_variable_braces_stay_in_the_word():
    assert words("add_header X ${uri}y;") == ["add_header", "X", "${uri}y", ";"]


def test_line_numbers_follow_multiline_strings():
    toks = list(tokenize('a "x\ny";\nb;', "t.conf"))
    assert [(t.value, t.line) for t in toks] == [("a", 1), ("x\ny", 1), (";", 2), ("b", 3), (";", 3)]


def test_tree_shape():
    tree = parse_text("http { server { listen 80; } }\nworker_processes 2;", "t.conf")
    assert [s.name for s in tree] == ["http", "worker_processes"]
    assert tree[0].block[0].block[0].args == ["80"]
    assert tree[1].line == 2


@pytest.mark.parametrize("text, message", [
    ("http {\n  server {\n  }\n", 'unexpected end of file, expecting "}" in t.conf:4'),
    ("worker_processes 2", 'unexpected end of file, expecting ";" or "}" in t.conf:1'),
    ("http {\n}\n}\n", 'unexpected "}" in t.conf:3'),
    ("http {\n  server {\n    listen 80\n  }\n}\n", 'unexpected "}" in t.conf:4'),
    ("http {\n ;\n}", 'unexpected ";" in t.conf:2'),
    ("a 'unterminated;\n", 'unexpected end of file, expecting ";" or "}" in t.conf:2'),
    ('a "x"y;', 'unexpected "y" in t.conf:1'),
])
def test_syntax_errors(text, message):
    with pytest.raises(ConfigError) as err:
        parse_text(text, "t.conf")
    assert str(err.value) == message


def test_include_with_glob_relative_to_the_main_files_folder(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text("server_name b;\n")
    (tmp_path / "conf.d" / "a.conf").write_text("server_name a;\n")
    (tmp_path / "conf.d" / "skip.txt").write_text("nope;\n")
    main = tmp_path / "main.conf"
    main.write_text("http {\n  server {\n    include conf.d/*.conf;\n  }\n}\n")
    tree = parse_file(str(main))
    names = [s.args[0] for s in tree[0].block[0].block]
    assert names == ["a", "b"]  # sorted, and only the glob's matches
    assert tree[0].block[0].block[0].file == str(tmp_path / "conf.d" / "a.conf")


def test_error_points_at_the_included_files_line(tmp_path):
    (tmp_path / "inc.conf").write_text("# first\nbogus_directive on;\n")
    main = tmp_path / "main.conf"
    main.write_text("http {\n  include inc.conf;\n}\n")
    with pytest.raises(ConfigError) as err:
        load_configuration(str(main))
    assert str(err.value) == f'unknown directive "bogus_directive" in {tmp_path / "inc.conf"}:2'


def test_missing_include_file_names_it(tmp_path):
    main = tmp_path / "main.conf"
    main.write_text("http {\n  include missing.conf;\n}\n")
    with pytest.raises(ConfigError) as err:
        parse_file(str(main))
    assert str(err.value).startswith(f'open() "{tmp_path / "missing.conf"}" failed (2: No such file or directory) in {main}:2')


def test_include_glob_matching_nothing_is_fine(tmp_path):
    main = tmp_path / "main.conf"
    main.write_text("include none/*.conf;\nworker_processes 1;\n")
    assert [s.name for s in parse_file(str(main))] == ["worker_processes"]


def test_include_loop_is_an_error_not_a_hang(tmp_path):
    main = tmp_path / "main.conf"
    main.write_text("include main.conf;\n")
    with pytest.raises(ConfigError, match="include nesting deeper"):
        parse_file(str(main))


def test_unreadable_file():
    with pytest.raises(ConfigError, match=r'open\(\) "/nonexistent/x.conf" failed \(2: No such file or directory\)'):
        parse_file("/nonexistent/x.conf")


def test_include_in_an_included_file_is_relative_to_the_main_files_folder(tmp_path):
    # nginx resolves every relative include against the folder of the main config (its conf prefix)
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "site.conf").write_text("include snippets/common.conf;\n")
    (tmp_path / "snippets").mkdir()
    (tmp_path / "snippets" / "common.conf").write_text("worker_processes 3;\n")
    main = tmp_path / "main.conf"
    main.write_text("include sites/site.conf;\n")
    assert [(s.name, s.args) for s in parse_file(str(main))] == [("worker_processes", ["3"])]


@pytest.mark.parametrize("main_text, inc_text, where, message", [
    # nginx runs each directive as it reads it (what real nginx 1.22 says for each of these)
    ("http {\n  server {\n    include inc.conf;\n  }\n}\n", 'server_name a;\nbogus on;\nserver_name "x;\n',
     "inc.conf:2", 'unknown directive "bogus"'),
    ("http {\n  server {\n    bogus on;\n    include inc.conf;\n  }\n}\n", 'server_name a;\nserver_name "x;\n',
     "main.conf:3", 'unknown directive "bogus"'),
    ("http {\n  server {\n    include inc.conf;\n    bogus on;\n  }\n}\n", 'server_name a;\nserver_name "x;\n',
     "inc.conf:3", 'unexpected end of file, expecting ";" or "}"'),
])
def test_a_directive_error_read_before_a_syntax_error_is_the_one_reported(tmp_path, main_text, inc_text, where,
                                                                           message):
    (tmp_path / "inc.conf").write_text(inc_text)
    main = tmp_path / "main.conf"
    main.write_text(main_text)
    with pytest.raises(ConfigError) as err:
        load_configuration(str(main))
    assert str(err.value) == f"{message} in {tmp_path / where}"


def test_a_command_line_directive_is_checked_before_the_files_syntax(tmp_path):
    main = tmp_path / "main.conf"
    main.write_text("http {\n")
    with pytest.raises(ConfigError) as err:
        load_configuration(str(main), params="worker_processes x;")
    assert str(err.value) == '"worker_processes" directive invalid value in command line'


def test_a_configuration_loads_again_from_what_its_first_load_read_not_from_the_disk(tmp_path):
    # a service's own process (core/helper.py) serves the configuration its worker loaded, even
    # when the files changed since: every file's text and every include glob's matches are kept
    from ngxsim.core.conf.loader import load_again

    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("listen 127.0.0.1:8001;\n")
    (tmp_path / "main.conf").write_text("worker_processes 3;\nhttp {\n  server {\n    include conf.d/*.conf;\n  }\n}\n")
    config = load_configuration(str(tmp_path / "main.conf"), params="error_log stderr notice;")
    (tmp_path / "conf.d" / "a.conf").write_text("listen 127.0.0.1:9001;\n")
    (tmp_path / "conf.d" / "b.conf").write_text("listen 127.0.0.1:9002;\n")  # the glob matches more now
    (tmp_path / "main.conf").write_text("worker_processes 5;\n")
    again = load_again(config.source)
    assert again.worker_processes == 3
    assert [listen.bind for listen in again.stash["core.http"].listens] == ["127.0.0.1:8001"]
    assert again.main["error_log"] == config.main["error_log"]  # the -g directives too
    fresh = load_configuration(str(tmp_path / "main.conf"))
    assert fresh.worker_processes == 5  # (a load of its own reads the disk)


def test_an_embedded_configuration_loads_again_from_its_text():
    from ngxsim.core.conf.loader import load_again

    config = load_configuration("<embedded>", text="worker_processes 4;\n", params="worker_processes 2;",
                                params_replace=True)
    assert load_again(config.source).worker_processes == config.worker_processes == 2

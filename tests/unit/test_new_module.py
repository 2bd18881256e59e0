"""``ngxsim new-module``: what it writes, and its errors for a name or a place it cannot use.
(The written package installed and its own tests run: tests/integration/test_pytest_plugin.py.)"""

from __future__ import annotations

import os
import sys
import tomllib

import pytest

from ngxsim import newmodule
from ngxsim.cli import main


def test_it_writes_a_package_with_an_entry_point_a_module_tests_and_a_config(tmp_path, capsys):
    assert main(["new-module", "greeter", "--dir", str(tmp_path)]) == 0
    package = tmp_path / "ngxsim-greeter"
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()) == [
        "README.md", "greeter.conf", "ngxsim_greeter/__init__.py", "pyproject.toml", "tests/test_greeter.py",
    ]
    for path in package.rglob("*.*"):
        assert "{{" not in path.read_text(), path
    project = tomllib.loads((package / "pyproject.toml").read_text())
    assert project["project"]["name"] == "ngxsim-greeter"
    assert project["project"]["entry-points"]["ngxsim"] == {"greeter": "ngxsim_greeter"}
    assert os.listdir(tmp_path) == ["ngxsim-greeter"]  # no staging folder left
    out = capsys.readouterr().out
    assert str(package) in out and "pytest" in out
    # after "cd" into the package, the config is named from there (and is there)
    assert f"cd {package} &&" in out and "ngxsim -t -c greeter.conf" in out and (package / "greeter.conf").is_file()


def test_the_written_module_serves_publishes_and_hears_its_events(tmp_path, make_app, monkeypatch):
    newmodule.create("greeter", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "ngxsim-greeter"))
    try:
        app = make_app("""
            load_module worker_events;
            load_module ngxsim_greeter;
            http {
                worker_events_zone bus;
                server { listen 127.0.0.1:8080; location /g { greeter; greeter_text "hi"; } }
            }""")
        assert app.get("/g").get_json()["last_name"] is None
        published = app.post("/g?name=Ada")
        assert published.status_code == 201
        answer = app.get("/g").get_json()  # this worker delivered its own event at request start
        assert (answer["text"], answer["last_name"]) == ("hi", "Ada")
        assert app.post("/g").status_code == 400
        assert app.delete("/g").headers["Allow"] == "GET, HEAD, POST"
    finally:
        sys.modules.pop("ngxsim_greeter", None)


@pytest.mark.parametrize(("name", "says"), [
    ("Greeter", "lower-case Python identifier"),
    ("my-module", "lower-case Python identifier"),
    ("1st", "lower-case Python identifier"),
    ("", "lower-case Python identifier"),
    ("x" * 41, "at most 40"),
    ("class", "a Python keyword"),
    ("match", "a Python keyword"),
    ("core", "ngxsim's own built-in module"),
    ("upstreams", 'a module named "upstreams" is already installed'),
    ("listen", 'its directive "listen" is one of ngxsim\'s'),
    ("worker_events", 'a module named "worker_events" is already installed'),
    ("worker_events_zone", 'its directive "worker_events_zone" is one of ngxsim\'s or worker_events\' own'),
])
def test_a_name_it_cannot_use_is_refused_saying_why(tmp_path, capsys, name, says):
    assert main(["new-module", name, "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ngxsim: ") and says in err
    assert os.listdir(tmp_path) == []


def test_an_existing_folder_is_left_as_it_is(tmp_path, capsys):
    mine = tmp_path / "ngxsim-greeter"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["new-module", "greeter", "--dir", str(tmp_path)]) == 1
    assert f"{mine} already exists" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["ngxsim-greeter"]


def test_a_missing_dir_is_an_error(tmp_path, capsys):
    assert main(["new-module", "greeter", "--dir", str(tmp_path / "nope")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(newmodule._FILES, "missing.tmpl", "missing")
    with pytest.raises(FileNotFoundError):
        newmodule.create("greeter", tmp_path)
    assert os.listdir(tmp_path) == []

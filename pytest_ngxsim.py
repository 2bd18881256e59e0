"""The ngxsim pytest plugin: real ngxsim servers and real loopback backends as fixtures.

Registered through the ``pytest11`` entry point, so ``pip install ngxsim`` is all a test suite
needs (``-p no:ngxsim`` turns it off). It lives outside the ``ngxsim`` package on purpose:
importing ``ngxsim`` pulls in Flask and werkzeug (~150 ms), and every pytest session on a machine
with ngxsim installed loads this module — so nothing here imports ngxsim until a fixture runs.

Fixtures: ``ngxsim_server`` (a factory of started servers), ``ngxsim_backend`` (a factory of
started backends), ``ngxsim_mode`` (the hosting mode a test runs in), ``ngxsim_redis`` (a real
``redis-server`` for the session), ``ngxsim_redis_factory`` (fresh ones, for tests that stop,
pause or restart their engine), ``ngxsim_engine`` / ``ngxsim_engine_factory`` (the same, once per
engine) and ``ngxsim_cluster`` (instances sharing an engine). The marker
``@pytest.mark.ngxsim_modes`` runs a test in both modes; ``--ngxsim-mode`` chooses the mode of
every other test (``both`` runs them all twice). See docs/testing.md.
"""

from __future__ import annotations

import pytest

_MODES = ("gunicorn", "ngxsim")  # ngxsim.testing.MODES, without importing ngxsim at startup
_STARTED = pytest.StashKey[list]()
_LOG_LINES = 200
_BACKEND_LINES = 30


def pytest_addoption(parser):
    group = parser.getgroup("ngxsim", "ngxsim servers and backends")
    group.addoption("--ngxsim-mode", choices=(*_MODES, "both"), default=None,
                    help="how ngxsim_server hosts servers: plain gunicorn (default), ngxsim -c, or both "
                         "(every test that uses ngxsim_server runs once per mode)")


def pytest_configure(config):
    config.addinivalue_line("markers", "ngxsim_modes(*modes): run the test once per hosting mode "
                                       "(default: gunicorn and ngxsim); ngxsim_server uses it")


def pytest_generate_tests(metafunc):
    if "ngxsim_mode" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("ngxsim_modes")
    if marker is not None:
        modes = marker.args or _MODES
        unknown = [m for m in modes if m not in _MODES]
        if unknown:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown ngxsim mode(s) {unknown}; known: {_MODES}")
    elif metafunc.config.getoption("ngxsim_mode") == "both":
        modes = _MODES
    else:
        return
    metafunc.parametrize("ngxsim_mode", modes, ids=[f"mode={m}" for m in modes])


@pytest.fixture
def ngxsim_mode(request) -> str:
    """``"gunicorn"`` or ``"ngxsim"``: how ``ngxsim_server`` hosts servers in this test."""
    chosen = request.config.getoption("ngxsim_mode")
    return chosen if chosen in _MODES else "gunicorn"


@pytest.fixture
def ngxsim_server(request, tmp_path, ngxsim_mode):
    """A factory of started :class:`ngxsim.testing.Server` s::

        server = ngxsim_server(CONF, workers=4, preload=False, worker_class="sync",
                               placeholders={"backend": backend.address})

    The config text may use ``{port}``, ``{tmp}`` (this test's ``tmp_path``) and the
    ``placeholders``. ``mode`` defaults to the test's ``ngxsim_mode``. It returns once every
    worker answered ``ready_path``; a server that cannot start raises
    :class:`ngxsim.testing.ServerStartError` with its ``[emerg]`` lines. At teardown every
    server is stopped and checked: no process, no shared-memory file left. The log of each is
    attached to the report of a failed test.
    """
    from ngxsim.testing import start_server, stop_all

    started = request.node.stash.setdefault(_STARTED, [])
    servers = []

    def start(conf_text: str, *, mode: str | None = None, **kw):
        # registered before it is ready, so a server that fails to start still shows its log
        kw.setdefault("wait_ready", True)
        wait = kw.pop("wait_ready")
        server = start_server(tmp_path, conf_text, mode=mode or ngxsim_mode, wait_ready=False, **kw)
        servers.append(server)
        started.append(server)
        if wait:
            server.wait_ready(kw.get("ready_path", "/"), kw.get("timeout", 30.0))
        return server

    yield start
    stop_all(servers)


@pytest.fixture
def ngxsim_backend(request):
    """A factory of started :class:`ngxsim.testing.Backend` s (HTTP/1.1 keep-alive on 127.0.0.1).

    ``backend = ngxsim_backend(name="a")``; every backend it made is stopped at teardown, and
    a backend whose threads do not end fails the test. What each received is attached to the
    report of a failed test.
    """
    from ngxsim.testing import Backend, stop_all

    started = request.node.stash.setdefault(_STARTED, [])
    made: list[Backend] = []

    def make(name: str | None = None, **kw) -> Backend:
        backend = Backend(name, **kw)
        made.append(backend)
        started.append(backend)
        return backend.start()

    yield make
    stop_all(made)


@pytest.fixture
def ngxsim_nginx(request):
    """A factory of started real nginx instances (:class:`ngxsim.testing.Nginx`), to compare a
    module with nginx's own: ``nginx = ngxsim_nginx(HTTP_INSIDE)`` serves the inside of an
    ``http`` block (``{port}`` is its free port, ``{prefix}`` its folder; more ``{name}`` with
    ``placeholders``), one worker. Its folder is a fresh one that nginx's workers can use even
    when they run as ``nobody`` (tests run as root): its temp folders, an empty ``html`` root
    (a request nothing answers is a 404), a cache under ``{prefix}``. Skips the test, saying why,
    where no ``nginx`` binary is installed. Every instance is stopped and its folder removed at
    teardown."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from ngxsim.testing import Nginx, find_nginx

    binary = find_nginx()
    if binary is None:
        pytest.skip("no nginx binary on PATH or in /usr/sbin (apt-get install nginx-light)")
    made: list[Nginx] = []

    def start(http_inside: str, placeholders: dict | None = None) -> Nginx:
        for name, value in (placeholders or {}).items():
            http_inside = http_inside.replace("{" + name + "}", str(value))
        folder = Path(tempfile.mkdtemp(prefix="ngxsim-nginx-"))
        os.chmod(folder, 0o755)
        (folder / "html").mkdir(mode=0o755)
        nginx = Nginx(binary, folder, http_inside.replace("{prefix}", str(folder)))
        made.append(nginx)
        return nginx.start()

    yield start
    for nginx in made:
        nginx.stop()
        shutil.rmtree(nginx.folder, ignore_errors=True)


def _need_redis():
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt install redis-server): the cluster tests run "
                    "against a real Redis")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis client is not installed: pip install 'ngxsim[cluster]'")


@pytest.fixture(scope="session")
def ngxsim_redis(tmp_path_factory):
    """A real ``redis-server`` on a free loopback port for the whole session, its data in a
    temporary folder (``.url``, ``.client()``); skipped, saying why, when it is not installed.
    Tests sharing it use their own stream names."""
    _need_redis()
    from ngxsim.testing.engines import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def ngxsim_redis_factory(tmp_path):
    """A factory of fresh ``redis-server`` s for one test (``make(password=None)``), for tests
    that stop, pause or restart their engine; all stopped at teardown."""
    _need_redis()
    from ngxsim.testing.engines import RedisServer

    made = []

    def make(**kw):
        server = RedisServer(tmp_path / f"redis-{len(made)}", **kw).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


# every engine the cluster bridge has a test server for: name -> (session fixture, factory fixture).
# An engine joins the engine-parametrized tests (ngxsim_engine, ngxsim_engine_factory) here.
ENGINE_FIXTURES = {"redis": ("ngxsim_redis", "ngxsim_redis_factory"), "nats": ("ngxsim_nats", "ngxsim_nats_factory")}


@pytest.fixture(params=sorted(ENGINE_FIXTURES))
def ngxsim_engine(request):
    """The session's server of each engine: a test using it runs once per engine (skipped,
    saying why, for an engine not installed). ``.url`` is what ``cluster_bridge`` takes."""
    return request.getfixturevalue(ENGINE_FIXTURES[request.param][0])


@pytest.fixture(params=sorted(ENGINE_FIXTURES))
def ngxsim_engine_factory(request):
    """A factory of fresh servers of each engine (the test runs once per engine), for tests
    that stop, pause, restart or wipe their engine."""
    return request.getfixturevalue(ENGINE_FIXTURES[request.param][1])


@pytest.fixture
def ngxsim_cluster(ngxsim_server, tmp_path):
    """A factory of clusters of ngxsim instances sharing one engine (see
    :mod:`ngxsim.testing.cluster`): ``cluster = ngxsim_cluster(engine.url)`` then
    ``a, b, c = cluster.start(CONF, count=3, workers=[2, 3, 2])``. The instances are
    ``ngxsim_server`` servers: stopped and checked at teardown."""
    from ngxsim.testing.cluster import Cluster

    def make(engine_url: str, folder: str = "cluster") -> Cluster:
        return Cluster(ngxsim_server, tmp_path / folder, engine_url)

    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    things = item.stash.get(_STARTED, None)
    if not report.failed or not things:
        return
    for thing in things:
        section = _section(thing)
        if section is not None:
            report.sections.append(section)


def _section(thing):
    """(title, text) for the report of a failed test: a server's log tail, a backend's requests."""
    from ngxsim.testing import Backend, Server

    if isinstance(thing, Server):
        return (f"ngxsim {thing.describe()}: {thing.log} (last {_LOG_LINES} lines)", thing.tail(_LOG_LINES))
    if isinstance(thing, Backend):
        requests = thing.requests
        lines = [f"{r.method} {r.path}{'?' + r.query if r.query else ''} from pid {r.worker_pid} (connection {r.connection})"
                 for r in requests[-_BACKEND_LINES:]]
        return (f"ngxsim backend {thing!r}: {len(requests)} requests (last {_BACKEND_LINES})", "\n".join(lines) or "(none)")
    return None


# -- NATS JetStream servers (the cluster bridge's engine) -------------------------------------


def _nats_or_skip():
    from ngxsim.testing.nats_server import nats_server_missing

    why = nats_server_missing()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="session")
def ngxsim_nats(tmp_path_factory):
    """One ``nats-server -js`` for the whole session (:class:`ngxsim.testing.nats_server.NatsServer`,
    ``.url``), on a free loopback port, its store in a temp folder removed at the end. Tests
    share it: each uses its own stream. Skips (saying why) where ``nats-server`` is missing."""
    import shutil

    from ngxsim.testing.nats_server import nats_node

    _nats_or_skip()
    folder = tmp_path_factory.mktemp("nats")
    server = nats_node(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ngxsim_nats_node(tmp_path):
    """A factory of started ``nats-server -js`` nodes of this test alone (to kill, pause,
    restart): ``node = ngxsim_nats_node(user="relay", password="s3cret")`` (or ``token=``).
    Stopped at teardown."""
    from ngxsim.testing.nats_server import nats_node

    _nats_or_skip()
    made = []

    def make(name: str | None = None, **kw):
        node = nats_node(tmp_path / "nats", name or f"n{len(made) + 1}", **kw)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


@pytest.fixture
def ngxsim_nats_factory(ngxsim_nats_node):
    """``ngxsim_redis_factory``'s twin for NATS, for the engine-parametrized tests:
    ``make(password=None)`` starts a node of this test alone; a password is the node's token
    (what the engine sends when the URL names no user)."""

    def make(password: str | None = None):
        return ngxsim_nats_node(token=password)

    return make


@pytest.fixture
def ngxsim_nats_cluster(tmp_path):
    """A factory of started NATS clusters (three JetStream nodes routed to each other on
    loopback by default): ``cluster = ngxsim_nats_cluster(3)``; ``cluster.url`` lists every
    node, ``cluster.nodes[i]`` can be killed and started again. Stopped at teardown."""
    from ngxsim.testing.nats_server import nats_cluster

    _nats_or_skip()
    made = []

    def make(size: int = 3, **kw):
        cluster = nats_cluster(tmp_path / f"nats-cluster{len(made) + 1}", size, **kw)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()

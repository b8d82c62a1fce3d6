"""Every check a contributor or CI runs, as nox sessions.

    nox -s tests                      # the whole matrix: every store x Celery version
    nox -s "tests-3.11(memory, newest)"   # one cell (see `nox -l` for the names)
    nox -s demo                       # the order saga on an in-process worker
    nox -s lint build docs bench
    nox -s plugin isolation           # a third-party store; each store installed alone
    nox -s template                   # the store template (examples/store-template), conformant
    nox -s install                    # the README's install lines, from built wheels
    nox -s django                     # the Django example: PostgreSQL and a real worker
    nox -s web                        # the web view: HTTP tests and Debian's chromium
    nox -s otel                       # the OpenTelemetry instrumentation, with the real SDK

The matrix axes are the constants below. Interpreters that are not installed are
skipped, never failed. Tests install the packages from built wheels, not from
the checkout, so packaging mistakes show up here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nox

nox.options.error_on_missing_interpreters = False
nox.options.sessions = [
    "lint", "tests", "build", "docs", "demo", "plugin", "template", "isolation", "install",
    "django", "web", "otel",
]  # fmt: skip
nox.options.reuse_existing_virtualenvs = False

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

#: Packages, in dependency order (core first).
PACKAGES = {
    "core": "packages/celery-saga-core",
    "redis": "packages/celery-saga-redis",
    "sql": "packages/celery-saga-sql",
    "mongo": "packages/celery-saga-mongo",
    "web": "packages/celery-saga-web",
    "otel": "packages/celery-saga-opentelemetry",
    "meta": "packages/celery-saga",
}

#: Store backends of the test matrix: packages to install, test folders, and the
#: state stores the end-to-end suite runs on (CELERY_SAGA_TEST_STORES). A lowest-Celery
#: cell runs the end-to-end suite on the first of them only: what differs between the
#: stores of one package is the store's code, which its own tests (every dialect, every
#: cell) and the newest-Celery cell's end-to-end runs cover; what the lowest Celery
#: changes is Celery's side, which one store shows.
BACKENDS: dict[str, dict[str, Any]] = {
    "memory": {"packages": ["core"], "tests": ["tests/core", "tests/e2e"], "stores": "memory"},
    "redis": {
        "packages": ["core", "redis"],
        # The FastAPI example's test (tests/redis/test_fastapi_example.py) runs it for real.
        "extras": ["fastapi", "uvicorn", "httpx"],
        "tests": ["tests/redis", "tests/e2e"],
        "stores": "redis,redis-cluster",
    },
    "sql": {
        "packages": ["core", "sql"],
        "extras": ["psycopg[binary]>=3.2", "pymysql>=1.1"],
        "tests": ["tests/sql", "tests/e2e"],
        "stores": "postgresql,mysql,sqlite",
    },
    "mongo": {
        "packages": ["core", "mongo"],
        "extras": ["SecantusDB"],
        "tests": ["tests/mongo", "tests/e2e"],
        "stores": "mongo",
    },
}

#: Celery versions of the matrix: the lowest we support and the newest (with the
#: kombu of their time: a newer kombu wants a newer redis-py than Celery 5.3 allows).
CELERY = {
    "lowest": ["celery[redis]==5.3.6", "kombu==5.3.7"],
    "newest": ["celery[redis]==5.7.0", "kombu==5.7.0"],
}


def _wheel_dir(session: nox.Session) -> Path:
    return Path(session.create_tmp()) / "wheels"


def install_packages(session: nox.Session, names: list[str], *extra: str) -> None:
    """Build wheels of `names` and install them (plus `extra` requirements).

    A name is a key of PACKAGES or the path of another package (the example plugin).
    """
    wheels = _wheel_dir(session)
    session.install("build")
    for name in names:
        session.run(
            "python", "-m", "build", "--wheel", "--outdir", str(wheels), _path(name), silent=True
        )
    session.install("--find-links", str(wheels), *[_dist(name) for name in names], *extra)


def _path(name: str) -> str:
    return PACKAGES.get(name, name)


def _dist(name: str) -> str:
    return Path(_path(name)).name


@nox.session(python=PYTHONS)
@nox.parametrize("celery", list(CELERY), ids=list(CELERY))
@nox.parametrize("backend", list(BACKENDS), ids=list(BACKENDS))
def tests(session: nox.Session, backend: str, celery: str) -> None:
    """Run the test suite for one store backend and one Celery version."""
    spec = BACKENDS[backend]
    install_packages(
        session,
        spec["packages"],
        *CELERY[celery],
        *spec.get("extras", []),
        *nox.project.dependency_groups(PYPROJECT, "test"),
    )
    stores = spec["stores"] if celery == "newest" else spec["stores"].split(",")[0]
    env = {"CELERY_SAGA_TEST_STORES": stores, "CELERY_SAGA_TEST_CELERY": celery}
    session.run("python", "-m", "pytest", *spec["tests"], *session.posargs, env=env)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint and format) on everything; mypy --strict on every package."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    # The SQL package with its drivers' extras: mypy checks the psycopg-specific code too.
    editable = [
        arg
        for target in (
            PACKAGES["core"],
            PACKAGES["redis"],
            f"{PACKAGES['sql']}[postgresql,mysql]",
            PACKAGES["mongo"],
            PACKAGES["web"],
            PACKAGES["otel"],
        )
        for arg in ("-e", target)
    ]
    session.install(*editable, "pytest", "pydantic", "click")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python="3.11")
def build(session: nox.Session) -> None:
    """Build every package's wheel and sdist into dist/ and check their metadata."""
    session.install("build", "twine")
    dist = ROOT / "dist"
    for path in PACKAGES.values():
        if (ROOT / path).exists():
            session.run("python", "-m", "build", "--outdir", str(dist), path)
    session.run("twine", "check", "--strict", *[str(p) for p in sorted(dist.iterdir())])


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the user guide and API reference; warnings are errors."""
    # Every store package, the SQL drivers included, so autodoc imports them all.
    install_packages(
        session,
        [n for n in ("core", "redis", "sql", "mongo") if (ROOT / PACKAGES[n]).exists()],
        "celery-saga-sql[postgresql,mysql]",
        *nox.project.dependency_groups(PYPROJECT, "docs"),
    )
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The order saga, then the composing example, on a real Celery worker in this process."""
    install_packages(session, ["core"])
    session.run("python", "examples/demo.py")
    session.run("python", "examples/composing.py")


#: The package this project grew from, benchmarked in a venv of its own (it has the
#: same import name, `celery_saga`), on the same Celery as our packages.
ORIGINAL = ["celery-saga==0.1.1", *CELERY["newest"]]
#: DBOS, the W6 contender (durable steps on PostgreSQL), in a venv of its own.
DBOS = ["dbos==3.4.0"]
#: W11's baseline, celery-saga-redis 0.4.0 (no PyPI release): core and the Redis store
#: from this repository's commit of that version, on the same Celery as our packages.
BASELINE_COMMIT = "040c323"
BASELINE_PACKAGES = [PACKAGES["core"], PACKAGES["redis"]]


def _has_commit(commit: str) -> bool:
    """Whether this repository has `commit` (a shallow clone may not)."""
    check = ["git", "cat-file", "-e", f"{commit}^{{commit}}"]
    return subprocess.run(check, cwd=ROOT, capture_output=True).returncode == 0


def baseline_venv(session: nox.Session) -> str | None:
    """A venv with celery-saga-core and celery-saga-redis 0.4.0 (from git); its python.

    None, with a message, when git or the commit is not there (e.g. a shallow clone).
    """
    found = shutil.which("git") is not None and _has_commit(BASELINE_COMMIT)
    if not found:
        session.warn(
            f"W11: git or commit {BASELINE_COMMIT} (celery-saga-redis 0.4.0) is not available "
            "(a shallow clone?): W11 measures this version without its 0.4.0 baseline"
        )
        return None
    tmp = Path(session.create_tmp())
    source, venv = tmp / "celery-saga-redis-0.4.0-src", tmp / "celery-saga-redis-0.4.0"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    archive = str(tmp / "celery-saga-redis-0.4.0.tar")
    git = ["git", "-C", str(ROOT), "archive", "-o", archive, BASELINE_COMMIT]
    session.run(*git, *BASELINE_PACKAGES, external=True)
    session.run("tar", "-x", "-f", archive, "-C", str(source), external=True)
    session.run("python", "-m", "venv", "--clear", str(venv))
    python = str(venv / "bin" / "python")
    packages = [str(source / path) for path in BASELINE_PACKAGES]
    session.run(python, "-m", "pip", "install", "-q", *packages, *CELERY["newest"], external=True)
    return python


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """W1-W11 against plain Celery chains, celery-saga 0.1.1, DBOS and celery-saga-redis 0.4.0;
    docs/performance.md.

    W9 times the web view (celery-saga-web, served by uvicorn, requested with httpx);
    W10 runs W1 with celery-saga-opentelemetry on and off (opentelemetry-sdk's tracer
    provider); W11 runs the Redis store against 0.4.0's, built from git (commit
    `BASELINE_COMMIT`; left out when git or the commit is missing). Prints the tables
    and writes benchmarks/results.json. Arguments after `--` go to benchmarks/run.py
    (e.g. `nox -s bench -- --quick`, `-- --workloads W6`; see `--help`); a run of every
    workload (no `--workloads`) also runs stores.py. With `--out FILE`, the results go
    to FILE and the page beside it (FILE with .md).
    """
    install_packages(
        session,
        ["core", "redis", "sql", "mongo", "web", "otel"],
        *CELERY["newest"],
        *nox.project.dependency_groups(PYPROJECT, "bench"),
        "opentelemetry-sdk>=1.20",
        "httpx>=0.27",
    )
    venvs = {}
    for name, requirements in (("celery-saga-0.1.1", ORIGINAL), ("dbos", DBOS)):
        venv = Path(session.create_tmp()) / name
        session.run("python", "-m", "venv", "--clear", str(venv))
        venvs[name] = str(venv / "bin" / "python")
        session.run(venvs[name], "-m", "pip", "install", "-q", *requirements, external=True)
    env = {"PYTHONPATH": str(ROOT / "benchmarks")}
    interpreters = ["--orig-python", venvs["celery-saga-0.1.1"], "--dbos-python", venvs["dbos"]]
    baseline = baseline_venv(session)
    if baseline:
        interpreters += ["--baseline-python", baseline]
    session.run("python", "benchmarks/run.py", *interpreters, *session.posargs, env=env)
    args = session.posargs
    out = args[args.index("--out") + 1] if "--out" in args[:-1] else None
    results = ["--out", out] if out else []
    if (ROOT / "benchmarks" / "stores.py").exists() and "--workloads" not in args:
        quick = ["--quick"] if "--quick" in args else []
        session.run("python", "benchmarks/stores.py", *quick, *results, env=env)
    page = ["--results", out, "--out", str(Path(out).with_suffix(".md"))] if out else []
    session.run("python", "benchmarks/report.py", *page, env=env)


#: The example third-party store (not one of our packages: see its README).
PLUGIN = "tests/plugin/celery-saga-example-store"


@nox.session(python="3.11")
def plugin(session: nox.Session) -> None:
    """The example store, built and installed as a wheel, found by its scheme, conformant."""
    install_packages(session, ["core", PLUGIN], "pytest>=8")
    # The plugin's own pyproject.toml is pytest's configuration and rootdir, so the
    # workspace's pytest settings and tests/conftest.py stay out of its run.
    own_config = ["--rootdir", PLUGIN, "-c", f"{PLUGIN}/pyproject.toml", "-p", "no:cacheprovider"]
    session.run("python", "-m", "pytest", f"{PLUGIN}/tests", "-q", *own_config, *session.posargs)


#: The template of a new store package (see its README).
TEMPLATE = "examples/store-template"


@nox.session(python="3.11")
def template(session: nox.Session) -> None:
    """The store template, installed from its wheel with core's `testing` extra, conformant."""
    install_packages(session, ["core"], "celery-saga-core[testing]")
    # Its wheel by path: the template's distribution name is a placeholder.
    wheels = Path(session.create_tmp()) / "template-wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    session.run("python", "-m", "build", "--wheel", "--outdir", str(wheels), TEMPLATE, silent=True)
    session.install(*[str(wheel) for wheel in wheels.glob("*.whl")])
    # Its own pyproject.toml is pytest's configuration and rootdir, as for the plugin.
    own_config = ["--rootdir", TEMPLATE, "-c", f"{TEMPLATE}/pyproject.toml"]
    session.run(
        "python", "-m", "pytest", f"{TEMPLATE}/tests", "-q", *own_config, "-p", "no:cacheprovider",
        *session.posargs,
    )  # fmt: skip


#: Store packages checked alone, with what their check needs besides core and celery.
ISOLATED: dict[str, list[str]] = {"redis": [], "sql": [], "mongo": ["SecantusDB"]}


@nox.session(python="3.11")
@nox.parametrize("store", list(ISOLATED), ids=list(ISOLATED))
def isolation(session: nox.Session, store: str) -> None:
    """One store package alone with core: sagas run, no other store's driver is imported."""
    # pip builds the wheels in its own isolated environments, so this venv holds only
    # what is installed below (the `build` package would add itself and its deps).
    wheels = _wheel_dir(session)
    for name in ("core", store):
        session.run(
            "python", "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), PACKAGES[name]
        )
    session.install(
        "--find-links", str(wheels), _dist("core"), _dist(store), "celery", *ISOLATED[store]
    )
    session.run("python", "-m", "pip", "list")
    session.run("python", "tests/isolation/check_isolation.py", store)


#: The README's install lines: `pip install celery-saga[EXTRA]`, one fresh venv each.
INSTALL_EXTRAS = ["redis", "postgresql", "mysql", "sql", "mongo", "web", "otel"]


@nox.session(python="3.11")
@nox.parametrize("extra", INSTALL_EXTRAS, ids=INSTALL_EXTRAS)
def install(session: nox.Session, extra: str) -> None:
    """`pip install celery-saga[EXTRA]` as the README writes it, from our built wheels.

    In a fresh venv; then a real worker of the quick-start app (examples/shop.py)
    runs a saga on the broker and store a user of that extra would have.
    """
    wheels = _wheel_dir(session)
    for path in PACKAGES.values():
        session.run("python", "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), path)
    if extra == "mongo" and not os.environ.get("CELERY_SAGA_MONGO_URL"):
        session.install("SecantusDB")  # the server, in this session's venv, not the user's
    work = Path(session.create_tmp()) / f"quickstart-{extra}"
    session.run("python", "tests/install/check_quickstart.py", extra, str(wheels), str(work))


#: The example Django project, and what its tests need besides our packages.
DJANGO_EXAMPLE = "examples/django_shop"
DJANGO = ["django>=4.2", "psycopg[binary]>=3.2", "pytest>=8"]


@nox.session(python="3.11")
def django(session: nox.Session) -> None:
    """The Django example: `run_on_commit` and CELERY_SAGA_* settings, end to end.

    Core and the Redis store from their wheels; the tests run the project on
    PostgreSQL with a real `celery -A django_shop worker` (Redis broker and store in
    database 6). The example's own pytest.ini is the configuration, so the
    workspace's tests/conftest.py stays out of the run.
    """
    install_packages(session, ["core", "redis"], *CELERY["newest"], *DJANGO)
    own_config = ["--rootdir", DJANGO_EXAMPLE, "-c", f"{DJANGO_EXAMPLE}/pytest.ini"]
    session.run("python", "-m", "pytest", f"{DJANGO_EXAMPLE}/tests", *own_config, *session.posargs)


#: What the web view's tests need besides our packages: an HTTP client for Starlette's
#: TestClient, and Playwright (it drives Debian's chromium: no browser is downloaded).
WEB = ["httpx", "playwright"]


@nox.session(python="3.11")
def web(session: nox.Session) -> None:
    """The web view (celery-saga-web) from its wheel: every page, filter and action over
    HTTP on the memory and Redis stores with a real worker, then in a real browser
    (``/usr/bin/chromium``, headless), which also saves the screenshots of docs/images/.
    """
    install_packages(
        session,
        ["core", "redis", "web"],
        *CELERY["newest"],
        *WEB,
        *nox.project.dependency_groups(PYPROJECT, "test"),
    )
    env = {"CELERY_SAGA_TEST_STORES": "memory,redis", "CELERY_SAGA_TEST_CELERY": "newest"}
    session.run("python", "-m", "pytest", "tests/web", *session.posargs, env=env)


#: What the tracing tests need besides our packages: the SDK (its in-memory exporter)
#: and Celery's own instrumentation, whose spans must nest under the step spans.
OTEL = ["opentelemetry-sdk>=1.20", "opentelemetry-instrumentation-celery>=0.41b0"]


@nox.session(python="3.11")
def otel(session: nox.Session) -> None:
    """The OpenTelemetry instrumentation (celery-saga-opentelemetry) from its wheel: span
    trees, Celery's spans nested, links of re-sent attempts, on a real in-process worker
    with the SDK's in-memory exporter; memory and Redis stores.
    """
    install_packages(
        session,
        ["core", "redis", "otel"],
        *CELERY["newest"],
        *OTEL,
        *nox.project.dependency_groups(PYPROJECT, "test"),
    )
    env = {"CELERY_SAGA_TEST_STORES": "memory,redis", "CELERY_SAGA_TEST_CELERY": "newest"}
    session.run("python", "-m", "pytest", "tests/otel", *session.posargs, env=env)


if os.environ.get("CELERY_SAGA_NOX_DEBUG"):
    print(sorted(BACKENDS), sorted(CELERY))

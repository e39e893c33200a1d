"""The `ticket-agent` command: help kept in sync with docs/cli.md, init, serve's error exits."""
from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from helpers import REPO, free_port, start_server, stop_server, write_config

from agent.config import DEFAULT_CONFIG_ENV, load_config
from service.cli import cli

DOC = REPO / "docs" / "cli.md"
PROG = "ticket-agent"
# A fenced ```text block right after its marker line: <!-- help: NAME -->
HELP_BLOCK_RE = re.compile(r"^<!-- help: (?P<name>[^>]+?) -->\n```text\n(?P<body>.*?)^```$", re.M | re.S)
MARKER_RE = re.compile(r"<!-- help: (?P<name>[^>]+?) -->")


# Click wraps help at min(terminal columns, 80) - 2, i.e. 78 on any usual terminal; CliRunner
# would force 80, so the width a real terminal gets is passed explicitly (and checked against
# a real process in test_help_of_a_real_process_matches_docs).
HELP_WIDTH = 78


@pytest.fixture
def no_server(monkeypatch):
    """Fail loudly if a test reaches the point of starting the real server."""
    import service.runner

    def refuse(*_args, **_kwargs):
        raise AssertionError("serve started a server; it should have stopped at the configuration")

    monkeypatch.setattr(service.runner, "serve", refuse)
    monkeypatch.setattr(service.runner, "setup_logging", lambda *_a, **_k: None)


def invoke(runner: CliRunner, args: list[str], **kwargs):
    return runner.invoke(cli, args, prog_name=PROG, terminal_width=HELP_WIDTH, **kwargs)


# --------------------------------------------------------------------------
# docs/cli.md holds the exact --help of every command


def documented_help() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    markers = [m.group("name") for m in MARKER_RE.finditer(text)]
    blocks = {}
    for m in HELP_BLOCK_RE.finditer(text):
        assert m.group("name") not in blocks, f"docs/cli.md: two help blocks for {m.group('name')!r}"
        blocks[m.group("name")] = m.group("body")
    malformed = sorted(set(markers) - set(blocks))
    assert not malformed, f"docs/cli.md: marker(s) {malformed} not directly followed by a ```text block"
    return blocks


def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Doc name -> argv for --help, for the group and every (nested) command."""
    found = {" ".join(prefix) or "main": [*prefix, "--help"]}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(all_commands(command, (*prefix, name)))
        else:
            found[" ".join((*prefix, name))] = [*prefix, name, "--help"]
    return found


def test_every_command_has_a_help_block_and_nothing_else():
    commands = set(all_commands())
    documented = set(documented_help())
    assert {"main", "serve", "init"} <= commands
    assert not commands - documented, (
        f"command(s) {sorted(commands - documented)} not documented in docs/cli.md: "
        "add a section with <!-- help: NAME --> and its --help output"
    )
    assert not documented - commands, f"docs/cli.md documents unknown command(s) {sorted(documented - commands)}"


@pytest.mark.parametrize("name", sorted(all_commands()))
def test_help_matches_docs(runner, name):
    args = all_commands()[name]
    result = invoke(runner, args)
    assert result.exit_code == 0, result.output
    blocks = documented_help()
    assert name in blocks, f"no <!-- help: {name} --> block in docs/cli.md"
    assert result.output == blocks[name], (
        f"docs/cli.md is out of date for `{PROG} {' '.join(args)}`; the block must read:\n{result.output}"
    )


@pytest.mark.parametrize("name", ["main", "serve"])
def test_help_of_a_real_process_matches_docs(name):
    """The width assumption above, checked once against `python -m service.cli` itself."""
    env = {**subprocess_env(), "COLUMNS": "120"}
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", *all_commands()[name]],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # main() names the program `ticket-agent` however it is started.
    assert proc.stdout == documented_help()[name]


def test_short_help_option(runner):
    assert invoke(runner, ["serve", "-h"]).output == invoke(runner, ["serve", "--help"]).output


def test_version_is_the_package_version(runner):
    # setup.cfg reads the version from service.__version__, so a source checkout and an
    # installed package answer the same.
    from service import __version__

    result = invoke(runner, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"{PROG}, version {__version__}\n"
    assert "version = attr: service.__version__" in (Path(__file__).parent.parent / "setup.cfg").read_text()


# --------------------------------------------------------------------------
# init


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def test_init_writes_a_loadable_private_file(runner, tmp_path):
    target = tmp_path / "store.toml"
    result = invoke(runner, ["init", str(target)])
    assert result.exit_code == 0, result.output
    assert f"{PROG} serve --config {target}" in result.stdout
    config = load_config(target, env={})
    assert not config.is_demo
    company = config.companies[0]
    assert re.fullmatch(r"[0-9a-f]{40}", company.key)
    assert company.username == "pos"
    assert len(company.password) == 24
    if os.name == "posix":
        assert mode(target) == 0o600


def test_init_credentials_are_random(runner, tmp_path):
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    for target in (first, second):
        assert invoke(runner, ["init", str(target)]).exit_code == 0
    a, b = (load_config(p, env={}).companies[0] for p in (first, second))
    assert a.key != b.key
    assert a.password != b.password
    assert a.password not in (a.key, b.key)


def test_init_refuses_to_overwrite(runner, tmp_path):
    target = tmp_path / "ticket-agent.toml"
    assert invoke(runner, ["init", str(target)]).exit_code == 0
    before, before_mode = target.read_bytes(), target.stat().st_mode
    result = invoke(runner, ["init", str(target)])
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert result.stdout == ""
    assert target.read_bytes() == before
    assert target.stat().st_mode == before_mode


def test_init_refuses_to_overwrite_any_existing_file(runner, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("not mine\n", encoding="utf-8")
    assert invoke(runner, ["init", str(target)]).exit_code == 1
    assert target.read_text(encoding="utf-8") == "not mine\n"


def test_init_force_overwrites(runner, tmp_path):
    target = tmp_path / "ticket-agent.toml"
    assert invoke(runner, ["init", str(target)]).exit_code == 0
    old = load_config(target, env={}).companies[0]
    if os.name == "posix":
        target.chmod(0o644)
    result = invoke(runner, ["init", "--force", str(target)])
    assert result.exit_code == 0, result.output
    new = load_config(target, env={}).companies[0]
    assert (new.key, new.password) != (old.key, old.password)
    if os.name == "posix":
        assert mode(target) == 0o600


def test_init_force_replaces_garbage(runner, tmp_path):
    target = tmp_path / "ticket-agent.toml"
    target.write_text("this is [not toml\n", encoding="utf-8")
    assert invoke(runner, ["init", "--force", str(target)]).exit_code == 0
    load_config(target, env={})


def test_init_default_path_is_in_the_current_directory(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cwd = tmp_path
    result = invoke(runner, ["init"])
    assert result.exit_code == 0, result.output
    target = Path(cwd) / "ticket-agent.toml"
    assert target.is_file()
    assert sorted(p.name for p in Path(cwd).iterdir()) == ["ticket-agent.toml"]
    assert f"{PROG} serve --config ticket-agent.toml" in result.stdout
    load_config(target, env={})
    if os.name == "posix":
        assert mode(target) == 0o600
    # and the default path is protected like any other
    again = invoke(runner, ["init"])
    assert again.exit_code == 1
    assert "ticket-agent.toml already exists" in again.stderr


def test_init_rejects_a_directory(runner, tmp_path):
    result = invoke(runner, ["init", str(tmp_path)])
    assert result.exit_code == 2  # click usage error
    assert "is a directory" in result.stderr


# --------------------------------------------------------------------------
# serve: configuration errors stop it before anything starts (exit 2)


def config_with(tmp_path: Path, old: str, new: str, name: str = "bad.toml") -> Path:
    """The helpers' valid config with the first `old` replaced by `new`."""
    good = write_config(tmp_path)
    text = good.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.fixture
def misspelt_key(tmp_path):
    return config_with(tmp_path, 'password = "tepox"', 'pasword = "tepox"', "misspelt.toml")


@pytest.fixture
def bad_timezone(tmp_path):
    return config_with(tmp_path, 'timezone = "America/Mexico_City"', 'timezone = "America/Mexico"', "badtz.toml")


def assert_config_error(result, *needles: str):
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # no banner: nothing started
    assert result.stderr.startswith("Configuration error: ")
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_serve_unknown_key(runner, no_server, misspelt_key):
    result = invoke(runner, ["serve", "--config", str(misspelt_key)])
    assert_config_error(result, "companies[0].pasword", str(misspelt_key))
    assert re.search(r"^  companies\[0\]\.pasword: unknown key", result.stderr, re.M)


def test_serve_bad_timezone(runner, no_server, bad_timezone):
    result = invoke(runner, ["serve", "--config", str(bad_timezone)])
    assert_config_error(result, "companies[0].branches[0].timezone", "America/Mexico")


def test_serve_missing_file(runner, no_server, tmp_path):
    missing = tmp_path / "nowhere" / "ticket-agent.toml"
    result = invoke(runner, ["serve", "--config", str(missing)])
    assert_config_error(result, str(missing), "not found")


def test_serve_invalid_toml(runner, no_server, tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[server]\nlisten = 0.0.0.0:8572\n', encoding="utf-8")
    result = invoke(runner, ["serve", "--config", str(path)])
    assert_config_error(result, str(path), "line 2")


def test_serve_uses_the_environment_variable(runner, no_server, misspelt_key):
    result = invoke(runner, ["serve"], env={DEFAULT_CONFIG_ENV: str(misspelt_key)})
    assert_config_error(result, "companies[0].pasword", str(misspelt_key))


def test_serve_config_option_wins_over_the_environment(runner, no_server, misspelt_key, bad_timezone):
    result = invoke(runner, ["serve", "--config", str(bad_timezone)], env={DEFAULT_CONFIG_ENV: str(misspelt_key)})
    assert_config_error(result, "companies[0].branches[0].timezone", str(bad_timezone))
    assert "pasword" not in result.stderr


def test_serve_missing_file_from_the_environment_does_not_fall_back_to_demo(runner, no_server, tmp_path):
    missing = tmp_path / "gone.toml"
    result = invoke(runner, ["serve"], env={DEFAULT_CONFIG_ENV: str(missing)})
    assert_config_error(result, str(missing), DEFAULT_CONFIG_ENV)


def test_serve_without_config_uses_the_demo(runner, monkeypatch):
    import service.runner

    seen = []
    monkeypatch.setattr(service.runner, "serve", lambda config: seen.append(config))
    monkeypatch.setattr(service.runner, "setup_logging", lambda *_a, **_k: None)
    result = invoke(runner, ["serve"])
    assert result.exit_code == 0, result.output
    assert len(seen) == 1 and seen[0].is_demo


# --------------------------------------------------------------------------
# serve as a real process


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(DEFAULT_CONFIG_ENV, None)
    return env


def test_serve_port_taken_exits_1(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, port=port)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "service.cli", "serve", "--config", str(path)],
                cwd=tmp_path,
                env=subprocess_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
            pytest.fail(f"serve kept running although port {port} is taken: {exc.stdout!r} {exc.stderr!r}")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert f"Cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "listening on" not in proc.stdout


def test_serve_without_its_postgresql_server_exits_1_naming_it_without_the_password(tmp_path):
    nobody = free_port()  # nothing listens there
    path = write_config(tmp_path, port=free_port(), database_url=f"postgresql://agent:s3cret@127.0.0.1:{nobody}/tickets")
    proc = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--config", str(path)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert f"Cannot open the database at postgresql://agent:***@127.0.0.1:{nobody}/tickets: " in proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM")
def test_serve_prints_the_banner_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    path = write_config(tmp_path, port=port)
    proc = start_server(["--config", str(path)], cwd=tmp_path, port=port)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        stop_server(proc)
    err = proc.output.stderr()
    out = proc.output.stdout()
    assert proc.returncode == 0, err
    assert out.splitlines()[0] == f"pos-ticket-agent listening on http://127.0.0.1:{port} (data in {tmp_path / 'data'})"
    assert "DEMO" not in out
    assert "stopped" in err


def test_unknown_company_or_branch_is_named(runner, tmp_path):
    from helpers import write_config

    path = write_config(tmp_path)
    result = runner.invoke(cli, ["global-invoice", "--config", str(path), "--branch", "nowhere", "--period", "2026-01-01"])
    assert result.exit_code == 2
    assert "has no branch nowhere" in result.output
    result = runner.invoke(cli, ["print-test", "--config", str(path), "--company", "nokey123"])
    assert result.exit_code == 2
    assert "No company with key nokey123" in result.output

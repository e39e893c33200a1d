"""`ticket-agent install-service`: a systemd unit that systemd itself accepts, starting
this installation with the store's configuration, hardened, and stopped with SIGTERM."""
from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import write_config

from service.cli import cli

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def install(runner, *args):
    return runner.invoke(cli, ["install-service", *map(str, args)], prog_name="ticket-agent")


def service_section(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return dict(parser["Service"])


def test_the_unit_runs_this_installation_with_the_configuration(runner, tmp_path):
    config = write_config(tmp_path)
    result = install(runner, "--config", config, "--user", "root", "--unit-dir", tmp_path)
    assert result.exit_code == 0, result.output
    unit = tmp_path / "ticket-agent.service"
    assert f"Wrote {unit}." in result.output
    assert "systemctl daemon-reload\n" in result.output and "systemctl enable --now ticket-agent\n" in result.output

    service = service_section(unit.read_text())
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).is_absolute() and os.access(command[0], os.X_OK)
    assert command[-3:] == ["serve", "--config", str(config)]
    # The command really starts this installation.
    probe = subprocess.run([*command[:-3], "--version"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})  # fmt: skip
    assert probe.returncode == 0 and probe.stdout.startswith("ticket-agent, version "), probe.stderr
    assert service["User"] == "root"
    assert (service["Type"], service["Restart"], service["KillSignal"], service["TimeoutStopSec"]) == (
        "simple", "on-failure", "SIGTERM", "30")
    assert service["WorkingDirectory"] == "/var/lib/ticket-agent"
    assert (service["NoNewPrivileges"], service["ProtectSystem"], service["PrivateTmp"]) == ("yes", "strict", "yes")
    assert service["ProtectHome"] in ("yes", "read-only")
    # ProtectSystem=strict makes everything read-only but these: the agent's data directory
    # (here beside the configuration) and the folder its file printer writes to.
    writable = shlex.split(service["ReadWritePaths"])
    assert writable == ["/var/lib/ticket-agent", str(tmp_path / "data"), f"-{tmp_path / 'prints'}"]


def test_systemd_accepts_the_unit(runner, tmp_path):
    if not os.access(SYSTEMD_ANALYZE, os.X_OK):
        # .ci/run installs it: under CI a missing verifier must fail, never pass unseen.
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed: .ci/run must install systemd")
        pytest.skip("systemd-analyze is not installed")
    config = write_config(tmp_path)
    assert install(runner, "--config", config, "--user", "root", "--unit-dir", tmp_path).exit_code == 0
    unit = tmp_path / "ticket-agent.service"
    check = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path)  # fmt: skip
    # Lines about other units of this machine are not ours to judge; none may name this one.
    ours = [line for line in check.stderr.splitlines() if "ticket-agent" in line]
    assert ours == [], check.stderr
    assert check.returncode == 0, check.stderr


def test_dry_run_prints_the_unit_and_writes_nothing(runner, tmp_path):
    result = install(runner, "--dry-run", "--config", tmp_path / "not-yet.toml", "--unit-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("# pos-ticket-agent under systemd")
    assert "[Service]" in result.stdout and "\nUser=ticket-agent\n" in result.stdout
    assert list(tmp_path.iterdir()) == []
    # What to do about a configuration not written yet goes to standard error, not into the unit.
    assert "not-yet.toml does not exist yet" in result.stderr
    assert "Note:" not in result.stdout


def test_a_changed_unit_is_not_overwritten_without_force(runner, tmp_path):
    config = write_config(tmp_path)
    unit = tmp_path / "ticket-agent.service"
    unit.write_text("[Service]\nExecStart=/usr/local/bin/ticket-agent serve\n# tuned by hand\n")
    result = install(runner, "--config", config, "--unit-dir", tmp_path)
    assert result.exit_code == 1
    assert "already exists and differs; use --force" in result.output
    assert "# tuned by hand" in unit.read_text()
    assert install(runner, "--config", config, "--unit-dir", tmp_path, "--force").exit_code == 0
    assert "ProtectSystem=strict" in unit.read_text()
    # Writing the same unit again is fine: nothing to overwrite.
    assert install(runner, "--config", config, "--unit-dir", tmp_path).exit_code == 0


def test_a_broken_configuration_is_refused_before_writing(runner, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[server]\nlisten = nowhere\n")
    result = install(runner, "--config", config, "--unit-dir", tmp_path)
    assert result.exit_code == 2
    assert "Cannot write the unit:" in result.output and str(config) in result.output
    assert not (tmp_path / "ticket-agent.service").exists()

"""`ticket-agent install-service`: the systemd unit, filled in from this installation.

The template (service/ticket-agent.service, shipped in the package) holds everything
fixed; here go the parts that depend on the machine: the command that starts this very
installation, the user, and the folders the agent must be able to write under
ProtectSystem=strict (its data directory, and file printers' folders outside it).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template

UNIT_NAME = "ticket-agent.service"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_CONFIG = Path("/etc/ticket-agent/config.toml")
DEFAULT_USER = "ticket-agent"
# StateDirectory=ticket-agent in the template: systemd creates it for the user.
STATE_DIR = Path("/var/lib/ticket-agent")


@dataclass
class Unit:
    text: str
    command: list[str]
    notes: list[str] = field(default_factory=list)  # what the person installing should know


def template() -> str:
    return resources.files("service").joinpath(UNIT_NAME).read_text(encoding="utf-8")


def render(config_path: Path, user: str = DEFAULT_USER, *, command: list[str] | None = None,
           write_paths: list[str] | None = None) -> Unit:  # fmt: skip
    """The unit for `ticket-agent serve --config config_path`, run as `user`.

    `command` (the program and its first arguments) defaults to this installation's own
    `ticket-agent`; `write_paths` default to what the configuration needs, read from it
    when it exists."""
    config_path = Path(config_path).absolute()
    notes: list[str] = []
    if command is None:
        command, note = this_command()
        if note:
            notes.append(note)
    if write_paths is None:
        write_paths, more = paths_to_write(config_path)
        notes += more
    argv = [*command, "serve", "--config", str(config_path)]
    if not user or any(c in user for c in " \t\n%$\"'\\"):
        raise ValueError(f"not a user name: {user!r}")
    # ProtectHome=yes hides /home, /root and /run/user: a program or configuration kept
    # there (a virtualenv in root's home) would fail to start with status 203/EXEC.
    in_home = [p for p in (argv[0], str(Path(sys.prefix)), str(config_path)) if _under_home(Path(p))]
    if in_home:
        notes.append(f"{in_home[0]} is under a home folder, so the unit only makes homes read-only "
                     "(ProtectHome=read-only); install the agent in /opt for ProtectHome=yes.")
    text = Template(template()).substitute(
        user=user,
        exec_start=" ".join(_quote(a, command_line=True) for a in argv),
        working_directory=_escape(str(STATE_DIR)),
        read_write_paths=" ".join(_quote(p) for p in write_paths),
        protect_home="read-only" if in_home else "yes",
    )
    return Unit(text, argv, notes)


def this_command() -> tuple[list[str], str | None]:
    """The absolute command that runs this installation's `ticket-agent`."""
    candidates = []
    if Path(sys.argv[0]).name == "ticket-agent":
        candidates.append(Path(sys.argv[0]))
    # The console script pip put beside this Python (a virtualenv's bin/, or the system's).
    candidates.append(Path(sys.executable).parent / ("ticket-agent.exe" if sys.platform == "win32" else "ticket-agent"))
    for candidate in candidates:
        if candidate.is_file():
            return [str(candidate.absolute())], None
    return [str(Path(sys.executable).absolute()), "-m", "service.cli"], (
        "ticket-agent is not installed as a command beside this Python; the unit runs "
        f"`{sys.executable} -m service.cli`, which needs the pos-ticket-agent package installed for it (pip install .)."
    )


def paths_to_write(config_path: Path) -> tuple[list[str], list[str]]:
    """The folders the service must write, and notes about them."""
    from agent.config import ConfigError, load_config
    from printer.connections import parse_printer

    paths = [str(STATE_DIR)]
    if not config_path.is_file():
        return paths, [f"{config_path} does not exist yet: the unit lets the agent write {STATE_DIR} only; set "
                       f'server.data_dir = "{STATE_DIR}" in it (ticket-agent init {config_path}).']  # fmt: skip
    try:
        config = load_config(config_path, env={})
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    notes = []
    data_dir = config.data_dir_path
    if not _inside(data_dir, STATE_DIR):
        paths.append(str(data_dir))
        notes.append(f"The data directory {data_dir} must exist and belong to the service's user before it starts.")
    for company in config.companies:
        for branch in company.branches:
            for spec in (branch.printer, *branch.printers.values()):
                try:
                    printer = parse_printer(spec)
                except ValueError:
                    continue
                if printer.kind in ("folder", "file") and not printer.target.startswith("/dev/"):
                    folder = Path(printer.target) if printer.kind == "folder" else Path(printer.target).parent
                    if not any(_inside(folder, Path(p.lstrip("-"))) for p in paths):
                        paths.append(f"-{folder}")  # "-": no failure at start if it does not exist yet
                        notes.append(f"Printer folder {folder} must exist and be writable by the service's user.")
    return paths, notes


def _under_home(path: Path) -> bool:
    return any(_inside(path, Path(home)) for home in ("/home", "/root", "/run/user"))


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _escape(text: str, command_line: bool = False) -> str:
    # systemd expands %-specifiers in most settings, and $VARIABLES in command lines.
    text = text.replace("%", "%%")
    return text.replace("$", "$$") if command_line else text


def _quote(arg: str, command_line: bool = False) -> str:
    arg = _escape(arg, command_line)
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'

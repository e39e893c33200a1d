"""Tests for agent/config.py: the store's TOML configuration file."""

from __future__ import annotations

import re
import string
import typing
from pathlib import Path

import pydantic
import pytest

from agent.config import (
    CsdConfig,
    FacturapiConfig,
    DEFAULT_CONFIG_ENV,
    BranchConfig,
    CompanyConfig,
    Config,
    ConfigError,
    ServerConfig,
    UpstreamConfig,
    default_config,
    load_config,
    starter_config_text,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

DEMO_KEY = "b391655ac2242d85ddd36d37b482259b1b7dfc1c"
CENTRO = "dsfhjkajslfd45646412"
NORTE = "0dd6aebbea85662fd2fe2f76ce4258b3"

FULL = f"""\
[server]
listen = "127.0.0.1:9000"
data_dir = "store-data"
public_url = "https://tienda.example.com/agent/"
threads = 8
max_body_kb = 2048

[upstream]
kind = "sandbox"

[[companies]]
key = "{DEMO_KEY}"
username = "tepox"
password = "s3cret-pass"
rfc = "EKU9003173C9"
legal_name = "ESCUELA KEMPER URGATE"
tax_regime = "601"
periodicity = "week"
self_invoice_days = 3
portal_url = "https://facturacion.example.com/{{company}}/{{branch}}/{{ticket}}?t={{total}}&d={{date}}"

[[companies.branches]]
id = "{CENTRO}"
name = "Centro"
postal_code = "68050"
timezone = "America/Mexico_City"
global_series = "FG"
printer = "file:prints/centro"

[[companies.branches]]
id = "{NORTE}"
name = "Norte"
postal_code = "68000"
timezone = "America/Tijuana"
global_series = "FN"
printer = "none"
"""

# Only the keys that have no default.
MINIMAL = """\
[[companies]]
key = "abcdefgh12345678"
username = "pos"
password = "pw"
rfc = "EKU9003173C9"
legal_name = "ESCUELA KEMPER URGATE"
tax_regime = "601"
portal_url = "https://facturacion.example.com/{ticket}"

[[companies.branches]]
id = "matriz"
name = "Matriz"
postal_code = "68050"
global_series = "FG"
printer = "none"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def variant(*edits: tuple[str, str]) -> str:
    """FULL with whole lines replaced; each old line must exist exactly once."""
    text = FULL
    for old, new in edits:
        assert text.count(old + "\n") == 1, old
        text = text.replace(old + "\n", new + "\n" if new else "")
    return text


def config_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return info.value


def problem_for(err: ConfigError, where: str) -> str:
    """The message of the problem reported at exactly `where`."""
    found = [p[len(where) + 2 :] for p in err.problems if p.startswith(where + ": ")]
    assert found, f"no problem reported at {where!r}; got:\n{err}"
    return found[0]


# --------------------------------------------------------------------------
# loading good files


def test_full_example_loads_with_every_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path, FULL, "etc/config.toml"), env={})
    etc = tmp_path / "etc"

    assert not cfg.is_demo
    assert cfg.source == etc / "config.toml"
    assert cfg.base_dir == etc
    assert cfg.server.listen == "127.0.0.1:9000"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 9000)
    assert cfg.data_dir_path == etc / "store-data"
    assert cfg.server.public_url == "https://tienda.example.com/agent"  # trailing slash dropped
    assert cfg.server.threads == 8
    assert cfg.server.max_body_kb == 2048
    assert cfg.upstream.kind == "sandbox"

    company = cfg.company(DEMO_KEY)
    assert company is cfg.companies[0]
    assert (company.username, company.password) == ("tepox", "s3cret-pass")
    assert company.rfc == "EKU9003173C9"
    assert company.legal_name == "ESCUELA KEMPER URGATE"
    assert company.tax_regime == "601"
    assert company.periodicity == "week"
    assert company.self_invoice_days == 3
    assert [b.id for b in company.branches] == [CENTRO, NORTE]

    centro, norte = company.branch(CENTRO), company.branch(NORTE)
    assert (centro.name, centro.postal_code, centro.global_series) == ("Centro", "68050", "FG")
    assert centro.zone.key == "America/Mexico_City"
    assert centro.printer == f"file:{etc / 'prints' / 'centro'}"
    assert centro.printer_path == etc / "prints" / "centro"
    assert (norte.name, norte.postal_code, norte.global_series, norte.printer) == ("Norte", "68000", "FN", "none")
    assert norte.zone.key == "America/Tijuana"

    assert cfg.company("nope") is None
    assert company.branch("nope") is None


def test_omitted_keys_take_their_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), env={})
    assert cfg.server == ServerConfig()
    assert (cfg.server.listen, cfg.server.host, cfg.server.port) == ("0.0.0.0:8572", "0.0.0.0", 8572)
    assert cfg.server.data_dir == "data"
    assert cfg.data_dir_path == tmp_path / "data"
    assert cfg.server.public_url == ""
    assert (cfg.server.threads, cfg.server.max_body_kb) == (16, 1024)
    assert cfg.upstream.kind == "sandbox"
    company = cfg.companies[0]
    assert (company.periodicity, company.self_invoice_days) == ("day", 7)
    assert company.branches[0].timezone == "America/Mexico_City"


def test_ipv6_listen_address(tmp_path):
    cfg = load_config(write(tmp_path, variant(('listen = "127.0.0.1:9000"', 'listen = "[::]:8572"'))), env={})
    assert (cfg.server.host, cfg.server.port) == ("::", 8572)


def test_lowercase_rfc_is_stored_uppercase(tmp_path):
    cfg = load_config(write(tmp_path, variant(('rfc = "EKU9003173C9"', 'rfc = "eku9003173c9"'))), env={})
    assert cfg.companies[0].rfc == "EKU9003173C9"


def test_portal_link_fills_placeholders(tmp_path):
    company = load_config(write(tmp_path, FULL), env={}).companies[0]
    link = company.portal_link(branch=CENTRO, ticket="A 1/2", total="115.00", date="2024-05-01")
    assert link == (
        f"https://facturacion.example.com/{DEMO_KEY}/{CENTRO}/A%201%2F2?t=115.00&d=2024-05-01"
    )


def test_credentials_check(tmp_path):
    company = load_config(write(tmp_path, FULL), env={}).companies[0]
    assert company.check_credentials("tepox", "s3cret-pass")
    assert not company.check_credentials("tepox", "tepox")
    assert not company.check_credentials("other", "s3cret-pass")


def test_password_is_not_in_repr(tmp_path):
    cfg = load_config(write(tmp_path, FULL), env={})
    assert "s3cret-pass" not in repr(cfg)


def test_config_is_read_only(tmp_path):
    cfg = load_config(write(tmp_path, FULL), env={})
    with pytest.raises(pydantic.ValidationError):
        cfg.server.threads = 1
    with pytest.raises(pydantic.ValidationError):
        cfg.companies[0].password = "x"


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbf" + FULL.encode("utf-8"))
    assert load_config(path, env={}).companies[0].key == DEMO_KEY


# --------------------------------------------------------------------------
# which file


def test_explicit_path_wins_over_env(tmp_path):
    explicit = write(tmp_path, FULL, "explicit.toml")
    from_env = write(tmp_path, MINIMAL, "env.toml")
    cfg = load_config(explicit, env={DEFAULT_CONFIG_ENV: str(from_env)})
    assert cfg.source == explicit
    assert cfg.company(DEMO_KEY) is not None


def test_env_var_is_used_without_path(tmp_path):
    from_env = write(tmp_path, MINIMAL, "env.toml")
    cfg = load_config(None, env={DEFAULT_CONFIG_ENV: str(from_env)})
    assert cfg.source == from_env
    assert not cfg.is_demo
    assert cfg.company("abcdefgh12345678") is not None


def test_env_var_defaults_to_os_environ(tmp_path, monkeypatch):
    from_env = write(tmp_path, MINIMAL, "env.toml")
    monkeypatch.setenv(DEFAULT_CONFIG_ENV, str(from_env))
    assert load_config(None).source == from_env


def test_missing_file_named_by_env_says_so(tmp_path):
    err = config_error_from(lambda: load_config(None, env={DEFAULT_CONFIG_ENV: str(tmp_path / "gone.toml")}))
    assert str(tmp_path / "gone.toml") in str(err)
    assert DEFAULT_CONFIG_ENV in str(err)


@pytest.mark.parametrize("env", [{}, {DEFAULT_CONFIG_ENV: ""}])
def test_no_path_no_env_gives_demo_defaults(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, env=env)
    assert cfg.is_demo
    assert cfg.source is None
    assert cfg.base_dir == tmp_path
    assert cfg.data_dir_path == tmp_path / "data"
    assert (cfg.server.host, cfg.server.port, cfg.server.threads, cfg.server.max_body_kb) == ("0.0.0.0", 8572, 16, 1024)
    assert cfg.server.public_url == ""
    assert cfg.upstream.kind == "sandbox"
    assert len(cfg.companies) == 1
    company = cfg.company(DEMO_KEY)
    assert (company.username, company.password) == ("tepox", "tepox")
    assert (company.rfc, company.legal_name, company.tax_regime) == ("EKU9003173C9", "ESCUELA KEMPER URGATE", "601")
    assert (company.periodicity, company.self_invoice_days) == ("day", 7)
    assert company.portal_url == "https://facturacion.example.com/{company}/{branch}/{ticket}"
    branches = [(b.id, b.name, b.postal_code, b.timezone, b.global_series) for b in company.branches]
    assert branches == [
        (CENTRO, "Centro", "68050", "America/Mexico_City", "FG"),
        (NORTE, "Norte", "68000", "America/Mexico_City", "FN"),
    ]
    assert company.branch(NORTE).printer == f"file:{tmp_path / 'data' / 'prints'}"


def test_default_config_is_demo():
    assert default_config().is_demo
    assert default_config() == load_config(None, env={})


def test_a_real_file_is_not_demo_even_with_demo_values(tmp_path):
    cfg = load_config(write(tmp_path, FULL), env={})
    assert not cfg.is_demo


# --------------------------------------------------------------------------
# bad values: each named with its full path

BAD_VALUES = [
    # id, (old line, new line), where, fragment expected in the message
    ("bad listen", ('listen = "127.0.0.1:9000"', 'listen = "localhost"'), "server.listen", "port"),
    ("bad port", ('listen = "127.0.0.1:9000"', 'listen = "0.0.0.0:70000"'), "server.listen", "70000"),
    ("port not a number", ('listen = "127.0.0.1:9000"', 'listen = "0.0.0.0:http"'), "server.listen", "not a number"),
    ("bare ipv6", ('listen = "127.0.0.1:9000"', 'listen = "::1:8572"'), "server.listen", "brackets"),
    ("bad public_url", ('public_url = "https://tienda.example.com/agent/"', 'public_url = "tienda.example.com"'),
     "server.public_url", "https://"),
    ("zero threads", ("threads = 8", "threads = 0"), "server.threads", "at least 1"),
    ("quoted number", ("threads = 8", 'threads = "8"'), "server.threads", "without quotes"),
    ("huge body", ("max_body_kb = 2048", "max_body_kb = 100000"), "server.max_body_kb", "at most 65536"),
    ("empty data_dir", ('data_dir = "store-data"', 'data_dir = ""'), "server.data_dir", "empty"),
    ("bad kind", ('kind = "sandbox"', 'kind = "stripe"'), "upstream.kind", '"facturapi"'),
    ("bad key chars", (f'key = "{DEMO_KEY}"', 'key = "my company key!"'), "companies[0].key", "'!'"),
    ("short key", (f'key = "{DEMO_KEY}"', 'key = "abc"'), "companies[0].key", "8 to 64"),
    ("username with colon", ('username = "tepox"', 'username = "te:pox"'), "companies[0].username", "':'"),
    ("empty password", ('password = "s3cret-pass"', 'password = ""'), "companies[0]",
     "exactly one of password or password_hash"),
    ("bad password_hash", ('password = "s3cret-pass"', 'password_hash = "s3cret-pass"'), "companies[0].password_hash",
     "ticket-agent hash-password"),
    ("bad rfc", ('rfc = "EKU9003173C9"', 'rfc = "EKU900317"'), "companies[0].rfc", "not a valid RFC"),
    ("rfc bad date", ('rfc = "EKU9003173C9"', 'rfc = "EKU9013173C9"'), "companies[0].rfc", "not a date"),
    ("generic rfc", ('rfc = "EKU9003173C9"', 'rfc = "XAXX010101000"'), "companies[0].rfc", "general public"),
    ("empty legal_name", ('legal_name = "ESCUELA KEMPER URGATE"', 'legal_name = " "'), "companies[0].legal_name",
     "empty"),
    ("bad regime", ('tax_regime = "601"', 'tax_regime = "600"'), "companies[0].tax_regime", '"626"'),
    ("unquoted regime", ('tax_regime = "601"', "tax_regime = 601"), "companies[0].tax_regime", 'tax_regime = "601"'),
    ("bad periodicity", ('periodicity = "week"', 'periodicity = "weekly"'), "companies[0].periodicity",
     '"fortnight"'),
    ("two_months with 601", ('periodicity = "week"', 'periodicity = "two_months"'), "companies[0].periodicity",
     "tax_regime"),
    ("negative self_invoice_days", ("self_invoice_days = 3", "self_invoice_days = -1"),
     "companies[0].self_invoice_days", "at least 0"),
    ("unknown placeholder",
     ('portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}?t={total}&d={date}"',
      'portal_url = "https://facturacion.example.com/{store}/{ticket}"'),
     "companies[0].portal_url", "{store}"),
    ("portal_url not http",
     ('portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}?t={total}&d={date}"',
      'portal_url = "facturacion.example.com/{ticket}"'),
     "companies[0].portal_url", "https://"),
    ("bad branch id", (f'id = "{NORTE}"', 'id = "norte 2"'), "companies[0].branches[1].id", "' '"),
    ("bad postal_code", ('postal_code = "68000"', 'postal_code = "6800"'), "companies[0].branches[1].postal_code",
     "5 digits"),
    ("unquoted postal_code", ('postal_code = "68000"', "postal_code = 68000"),
     "companies[0].branches[1].postal_code", 'postal_code = "68000"'),
    ("unknown timezone", ('timezone = "America/Tijuana"', 'timezone = "America/Tijuna"'),
     "companies[0].branches[1].timezone", "America/Tijuana"),
    ("long global_series", ('global_series = "FN"', 'global_series = "' + "F" * 26 + '"'),
     "companies[0].branches[1].global_series", "at most 25"),
    ("empty printer", ('printer = "none"', 'printer = ""'), "companies[0].branches[1].printer", "none"),
]


@pytest.mark.parametrize("edit, where, fragment", [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_bad_value_is_reported_at_its_key(tmp_path, edit, where, fragment):
    err = config_error(tmp_path, variant(edit))
    assert len(err.problems) == 1, str(err)
    assert fragment in problem_for(err, where)


def test_two_months_is_fine_for_regime_621(tmp_path):
    text = variant(('tax_regime = "601"', 'tax_regime = "621"'), ('periodicity = "week"', 'periodicity = "two_months"'))
    assert load_config(write(tmp_path, text), env={}).companies[0].periodicity == "two_months"


def test_password_value_never_appears_in_errors(tmp_path):
    secret = "x" * 129
    err = config_error(tmp_path, variant(('password = "s3cret-pass"', f'password = "{secret}"')))
    assert "at most 128" in problem_for(err, "companies[0].password")
    assert secret not in str(err)


def test_several_problems_are_all_reported(tmp_path):
    err = config_error(
        tmp_path,
        variant(("threads = 8", "threads = 0"), ('rfc = "EKU9003173C9"', 'rfc = "nope"'), ('postal_code = "68050"', 'postal_code = "1"')),
    )
    assert [p.split(":")[0] for p in err.problems] == [
        "server.threads",
        "companies[0].rfc",
        "companies[0].branches[0].postal_code",
    ]


def test_duplicate_company_key(tmp_path):
    second = FULL[FULL.index("[[companies]]") :]
    err = config_error(tmp_path, FULL + "\n" + second)
    assert "already used by companies[0]" in problem_for(err, "companies[1].key")


def test_duplicate_branch_id(tmp_path):
    err = config_error(tmp_path, variant((f'id = "{NORTE}"', f'id = "{CENTRO}"')))
    assert "already used by branches[0]" in problem_for(err, "companies[0].branches[1].id")


def test_same_branch_id_in_two_companies_is_fine(tmp_path):
    second = FULL[FULL.index("[[companies]]") :].replace(DEMO_KEY, "another-company-key")
    cfg = load_config(write(tmp_path, FULL + "\n" + second), env={})
    assert cfg.company("another-company-key").branch(CENTRO) is not None


def test_no_companies(tmp_path):
    err = config_error(tmp_path, FULL[: FULL.index("[[companies]]")])
    assert "[[companies]]" in problem_for(err, "companies")


def test_companies_written_with_single_brackets(tmp_path):
    err = config_error(tmp_path, MINIMAL.replace("[[companies]]", "[companies]").split("[[companies.branches]]")[0])
    assert "[[companies]]" in problem_for(err, "companies")


def test_company_without_branches(tmp_path):
    err = config_error(tmp_path, MINIMAL[: MINIMAL.index("[[companies.branches]]")])
    assert "[[companies.branches]]" in problem_for(err, "companies[0].branches")


def test_missing_required_key(tmp_path):
    err = config_error(tmp_path, variant(('legal_name = "ESCUELA KEMPER URGATE"', "")))
    assert "missing" in problem_for(err, "companies[0].legal_name")


# --------------------------------------------------------------------------
# unknown keys


@pytest.mark.parametrize(
    "edit, where, hint",
    [
        (("[server]", 'colour = "blue"\n[server]'), "colour", None),
        (("threads = 8", "threads = 8\nthreds = 8"), "server.threds", '"threads"'),
        (('kind = "sandbox"', 'kind = "sandbox"\nurl = "x"'), "upstream.url", None),
        (("self_invoice_days = 3", "self_invoice_days = 3\nself_invoice_dayz = 3"),
         "companies[0].self_invoice_dayz", '"self_invoice_days"'),
        (('printer = "none"', 'printer = "none"\npasword = "x"'), "companies[0].branches[1].pasword", '"password"'),
        (('printer = "none"', 'printer = "none"\nperiodicity = "day"'), "companies[0].branches[1].periodicity",
         "before the first [[companies.branches]]"),
    ],
    ids=["top level", "server", "upstream", "company", "branch", "company key inside branch"],
)
def test_unknown_key_is_named_with_full_path(tmp_path, edit, where, hint):
    err = config_error(tmp_path, variant(edit))
    message = problem_for(err, where)
    assert message.startswith("unknown key")
    if hint:
        assert hint in message


# --------------------------------------------------------------------------
# unusable files


def config_error_from(call) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call()
    return info.value


def test_toml_syntax_error_reports_line(tmp_path):
    text = variant(('name = "Norte"', "name = Norte"))
    lineno = text.splitlines().index("name = Norte") + 1
    path = write(tmp_path, text)
    err = config_error_from(lambda: load_config(path, env={}))
    assert str(path) in str(err).splitlines()[0]
    assert "not valid TOML" in str(err)
    assert f"line {lineno}, column" in err.problems[0]
    assert "name = Norte" in err.problems[0]


def test_duplicate_toml_key_is_a_syntax_error(tmp_path):
    err = config_error(tmp_path, variant(("threads = 8", "threads = 8\nthreads = 9")))
    assert "set twice" in err.problems[0]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    err = config_error_from(lambda: load_config(path, env={}))
    assert str(path) in str(err)
    assert "not found" in str(err)


def test_directory_instead_of_file(tmp_path):
    err = config_error_from(lambda: load_config(tmp_path, env={}))
    assert "folder" in str(err)


def test_not_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(FULL.replace("URGATE", "URGAT\xc9").encode("latin-1"))
    err = config_error_from(lambda: load_config(path, env={}))
    assert "UTF-8" in str(err)


def test_error_text_layout(tmp_path):
    err = config_error(tmp_path, variant(("threads = 8", "threads = 0"), ("max_body_kb = 2048", "max_body_kb = 0")))
    lines = str(err).splitlines()
    assert lines[0] == f"Configuration file {tmp_path / 'config.toml'} has 2 problems:"
    assert lines[1:] == [
        "  server.threads: must be at least 1 (got 0)",
        "  server.max_body_kb: must be at least 1 (got 0)",
    ]
    assert err.source == str(tmp_path / "config.toml")


# --------------------------------------------------------------------------
# relative paths


def test_relative_paths_resolve_next_to_config_file(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(tmp_path, FULL, "etc/config.toml")
    cfg = load_config(Path("..") / "etc" / "config.toml", env={})  # relative to the cwd
    etc = tmp_path / "etc"
    assert cfg.base_dir == etc
    assert cfg.data_dir_path == etc / "store-data"
    assert cfg.data_dir_path.is_absolute()
    assert cfg.resolve_path("x/y.db") == etc / "x" / "y.db"
    assert cfg.resolve_path("/var/lib/agent") == Path("/var/lib/agent")
    assert cfg.companies[0].branches[0].printer == f"file:{etc / 'prints' / 'centro'}"


def test_absolute_data_dir_is_kept(tmp_path):
    target = tmp_path / "abs-data"
    cfg = load_config(write(tmp_path, variant(('data_dir = "store-data"', f'data_dir = "{target}"')), "etc/c.toml"), env={})
    assert cfg.data_dir_path == target


# --------------------------------------------------------------------------
# starter file (ticket-agent init)


def _field_model(annotation):
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, pydantic.BaseModel):
            return arg
    return None


def settings(model=Config, prefix=""):
    """Every leaf setting as `section.key`, walking the models recursively."""
    out = []
    for name, field in model.model_fields.items():
        sub = _field_model(field.annotation)
        if sub is not None:
            out += settings(sub, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def tables(model=Config, prefix=""):
    out = []
    for name, field in model.model_fields.items():
        sub = _field_model(field.annotation)
        if sub is not None:
            out.append(f"{prefix}{name}")
            out += tables(sub, f"{prefix}{name}.")
    return out


def test_settings_walk_sees_all_models():
    # guards the walkers above: if a model is added they must find it
    assert {"server.listen", "upstream.kind", "companies.key", "companies.branches.timezone"} <= set(settings())
    assert tables() == [
        "server", "upstream", "database", "companies", "companies.csd", "companies.facturapi", "companies.branches"
    ]
    assert len(settings()) == len(ServerConfig.model_fields) + len(UpstreamConfig.model_fields) + 1 + (
        len(CompanyConfig.model_fields) - 3
    ) + len(BranchConfig.model_fields) + len(CsdConfig.model_fields) + len(FacturapiConfig.model_fields)


def test_starter_config_loads_cleanly(tmp_path):
    cfg = load_config(write(tmp_path, starter_config_text()), env={})
    assert not cfg.is_demo
    assert len(cfg.companies) == 1
    assert len(cfg.companies[0].branches) == 1
    assert cfg.companies[0].username == "pos"


def test_starter_config_has_fresh_random_credentials(tmp_path):
    a = load_config(write(tmp_path, starter_config_text(), "a.toml"), env={}).companies[0]
    b = load_config(write(tmp_path, starter_config_text(), "b.toml"), env={}).companies[0]
    assert a.key != b.key and a.password != b.password
    for company in (a, b):
        assert re.fullmatch(r"[0-9a-f]{40}", company.key)
        assert len(company.password) >= 16
        assert set(company.password) <= set(string.ascii_letters + string.digits + "-_")
        assert company.key != DEMO_KEY and company.password != "tepox"


def test_starter_config_uses_given_rng(tmp_path):
    class FixedRng:
        def token_hex(self, n):
            return "ab" * n

        def token_urlsafe(self, n):
            return "Pw_" + "z" * 20

    cfg = load_config(write(tmp_path, starter_config_text(FixedRng())), env={})
    assert (cfg.companies[0].key, cfg.companies[0].password) == ("ab" * 20, "Pw_" + "z" * 20)


# Optional tables appear commented out in the starter file: it must load as it is.
OPTIONAL_TABLES = {"companies.csd", "companies.facturapi"}


def test_starter_config_has_every_key_with_a_comment():
    lines = starter_config_text().splitlines()
    for table in tables():
        header = f"[[{table}]]" if table in ("companies", "companies.branches") else f"[{table}]"
        if table in OPTIONAL_TABLES:
            header = f"# {header}"
        assert header in lines, header
    for setting in settings():
        table, key = setting.rsplit(".", 1)
        start = "# " if table in OPTIONAL_TABLES else ""
        matches = [i for i, line in enumerate(lines) if line.startswith(f"{start}{key} = ")]
        assert matches, f"{setting} missing from the starter file"
        assert lines[matches[0] - 1].startswith("# "), f"{setting} has no comment line above it"


# --------------------------------------------------------------------------
# docs can't rot

SETTING_MENTION = re.compile(r"\b(?:server|upstream|database|companies)(?:\.[a-z_]+)+")


def test_docs_describe_every_setting():
    text = DOC.read_text(encoding="utf-8")
    described = set()
    for line in text.splitlines():
        if line.startswith("#") or line.startswith("|"):
            described |= set(re.findall(r"`([a-z_.]+)`", line))
    missing = [s for s in settings() if s not in described]
    assert not missing, f"docs/configuration.md does not describe: {missing}"


def test_docs_mention_no_setting_that_does_not_exist():
    text = DOC.read_text(encoding="utf-8")
    known = set(settings()) | set(tables())
    unknown = sorted(set(SETTING_MENTION.findall(text)) - known)
    assert not unknown, f"docs/configuration.md mentions settings that do not exist: {unknown}"


def _doc_block(marker: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {marker} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert m, f"docs/configuration.md has no code block after <!-- {marker} -->"
    return m.group(1)


def test_docs_full_example_loads(tmp_path):
    cfg = load_config(write(tmp_path, _doc_block("full-example")), env={})
    assert not cfg.is_demo


def test_docs_error_example_is_what_the_agent_prints(tmp_path):
    path = write(tmp_path, _doc_block("error-example-input"))
    err = config_error_from(lambda: load_config(path, env={}))
    shown = str(err).replace(str(path), "/etc/ticket-agent/config.toml")
    assert shown + "\n" == _doc_block("error-example-output")


# --------------------------------------------------------------------------
# [database]


def test_database_defaults_to_the_sqlite_file(tmp_path):
    cfg = load_config(write(tmp_path, FULL), env={})
    assert cfg.database.url == "" and not cfg.database.is_postgresql and cfg.database.shown == "SQLite"


@pytest.mark.parametrize("url", [
    "postgresql://agent@db.example.com:5432/tickets",
    "postgres://agent:secret@10.0.0.5/tickets?sslmode=require",
    "postgresql:///tickets?host=/var/run/postgresql",
])  # fmt: skip
def test_database_url_on_postgresql(tmp_path, url):
    cfg = load_config(write(tmp_path, FULL + f'\n[database]\nurl = "{url}"\n'), env={})
    assert cfg.database.url == url and cfg.database.is_postgresql
    assert "secret" not in cfg.database.shown


@pytest.mark.parametrize("url, problem", [
    ("mysql://agent:secret@db/tickets", "is not a postgresql:// address"),
    ("postgresql://agent:secret@db.example.com:54x2/tickets", "has a port that is not a number"),
    ("postgresql://agent:secret@/tickets", "names no host"),
    ("postgresql://agent:secret@db.example.com:5432", "names no database after the host"),
])  # fmt: skip
def test_a_wrong_database_url_is_named_without_its_password(tmp_path, url, problem):
    err = config_error(tmp_path, FULL + f'\n[database]\nurl = "{url}"\n')
    [line] = err.problems
    assert line.startswith("database.url: ") and problem in line
    assert "secret" not in str(err) and "***" in line

"""Settings documentation stays true: env.example lists every setting the code reads (and
nothing else), docs/configuration.md's table lists the same settings with the same
defaults, and every value in env.example is accepted by the strict parsers."""
from __future__ import annotations

import re
from pathlib import Path

from bybitsim.options import options_from_env
from common.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
# Read by the code but set by the scripts (run.sh, the entrypoint, the tests) or by supervisord
# for its children (SUPERVISOR_SERVER_URL), not by operators.
INTERNAL = {"GW_HOME", "GW_PYTHON", "GW_SIM_AUTOSTART", "PROMETHEUS_MULTIPROC_DIR", "SUPERVISOR_SERVER_URL"}
READS = re.compile(r"""(?:\b(?:e|env)\.(?:str|int|float|choice|url)\(|\benv\.get\(|environ\.get\(|environ\[|"""
                   r"""_float\(env,\s*|_int\(env,\s*|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']""")


def settings_read_by_code() -> set[str]:
    names = set()
    for package in ("common", "ingest", "publisher", "persister", "api", "ops", "bybitsim"):
        for path in (ROOT / package).glob("*.py"):
            names |= set(READS.findall(path.read_text()))
    names |= set(re.findall(r"%\(ENV_([A-Z0-9_]+)\)s", (ROOT / "supervisord.conf").read_text()))
    return names - INTERNAL


def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(settings, environment-only settings written as ``# NAME=value``)."""
    text = (ROOT / "env.example").read_text()
    active = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    env_only = dict(re.findall(r"^# ([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    return active, env_only


def configuration_table() -> dict[str, str]:
    """{setting: default} from every table row of docs/configuration.md that names a setting.
    A setting listed twice would hide one of its rows: refused."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| (.*?) \|", text, re.M)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"
    return {name: "" if default == "(empty)" else default.strip("`") for name, default in rows}


def test_env_example_lists_every_setting_the_code_reads_and_no_other():
    active, env_only = env_example()
    listed = set(active) | set(env_only)
    read = settings_read_by_code()
    assert sorted(read - listed) == [], "read by the code, missing from env.example"
    assert sorted(listed - read) == [], "in env.example, read by nothing"
    for name in ("SIM_API_KEY", "SIM_API_SECRET", "SIM_SYMBOLS", "SIM_ACCOUNT_RATE", "SIM_SEED",
                 "SIM_REJECT_MODE", "SIM_ACCOUNT_SYMBOLS", "GW_LOG_MAXBYTES", "GW_LOG_BACKUPS"):
        assert name in active


def test_configuration_table_matches_env_example():
    active, env_only = env_example()
    assert configuration_table() == {**active, **env_only}


def test_env_example_values_are_accepted():
    active, _ = env_example()
    settings = load_settings(active)
    assert settings.bybit_env == "mainnet" and not settings.has_private
    opts = options_from_env(settings, active)
    assert opts.api_key == "sim-key" and opts.account_symbols == ("BTCUSDT", "ETHUSDT")
    assert re.fullmatch(r"\d+(KB|MB|GB)?", active["GW_LOG_MAXBYTES"]) and active["GW_LOG_BACKUPS"].isdigit()


def test_quick_start_is_run_demo_test():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in quick.strip().splitlines()] == ["make run", "make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: bootstrap\n\t@scripts/run.sh$", makefile, re.M)
    assert re.search(r"^demo: bootstrap\n\t@BYBIT_ENV=sim scripts/run.sh$", makefile, re.M)

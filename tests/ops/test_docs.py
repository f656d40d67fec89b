"""Settings documentation stays true: env.example and the settings table of
docs/configuration.md are what the settings table of common/config.py generates, the table fills every field
of Settings and of the simulator's options, and every value in env.example is accepted by the
strict parsers."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from bybitsim.faults import REJECT_MODES
from bybitsim.options import LISTINGS, SimOptions, options_from_env
from common import config as settings_table
from common.config import CONFIGURATION_MD, ENV_EXAMPLE, Settings, _Env, generated_files, load_settings, read
from common.logs import SECRET_SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(settings, environment-only settings written as ``# NAME=value``)."""
    text = ENV_EXAMPLE.read_text()
    active = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    env_only = dict(re.findall(r"^# ([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    return active, env_only


def configuration_table() -> dict[str, str]:
    """{setting: default} from every table row of docs/configuration.md that names a setting.
    A setting listed twice would hide one of its rows: refused."""
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| (.*?) \|", CONFIGURATION_MD.read_text(), re.M)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"
    return {name: "" if default == "(empty)" else default.strip("`") for name, default in rows}


def test_env_example_and_configuration_md_are_generated_from_the_table():
    """If this fails, regenerate: make settings (python -m common.config --write)."""
    for path, text in generated_files().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run make settings"


def test_check_command_says_the_committed_files_are_current():
    done = subprocess.run([sys.executable, "-m", "common.config", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_env_example_and_docs_list_every_operator_setting_once():
    active, env_only = env_example()
    documented = {s.name for s in settings_table.documented()}
    assert set(active) | set(env_only) == documented and not set(active) & set(env_only)
    assert set(env_only) == {s.name for s in settings_table.of_reader(settings_table.ENV_ONLY)}
    assert set(configuration_table()) == documented
    for s in settings_table.TABLE:
        if s.secret and s.reader != settings_table.INTERNAL:
            assert active[s.name] == "", f"{s.name}: a secret is left empty in env.example"


def test_env_example_values_are_accepted():
    active, _ = env_example()
    settings = load_settings(active)
    assert settings.bybit_env == "mainnet" and not settings.has_private
    opts = options_from_env(settings, active)
    assert opts.api_key == "sim-key" and opts.account_symbols == ("BTCUSDT", "ETHUSDT")
    # the settings scripts/run.sh and supervisord read: checked against the table's patterns
    e = _Env(active)
    for s in settings_table.of_reader(settings_table.SCRIPTS):
        assert read(e, s) == active[s.name]


def test_simulator_options_accept_their_defaults():
    settings = load_settings({})
    assert options_from_env(settings, {}) == SimOptions()
    assert settings_table.spec("SIM_REJECT_MODE").choices == REJECT_MODES
    assert settings_table.spec("SIM_LISTING").choices == LISTINGS


def test_the_table_fills_every_field_of_settings_and_of_the_simulator_options():
    settings_fields = [s.field for s in settings_table.of_reader(settings_table.SETTINGS)]
    assert sorted(settings_fields) == sorted(f.name for f in dataclasses.fields(Settings))
    sim_fields = {s.field for s in settings_table.of_reader(settings_table.SIM)}
    sim_from_settings = {"host", "port", "rate"}
    internal_limits = {"max_pushes", "push_window_s", "max_stalled_pushes"}   # not settings
    assert sim_fields | sim_from_settings | internal_limits == {f.name for f in dataclasses.fields(SimOptions)}


def test_secrets_are_the_same_in_the_table_in_the_log_scrubber_and_out_of_repr():
    assert sorted(settings_table.secret_names()) == sorted(SECRET_SETTINGS)
    hidden = {f.name for f in dataclasses.fields(Settings) if not f.repr}
    for s in settings_table.of_reader(settings_table.SETTINGS):
        if s.secret:
            assert s.field in hidden, s.name


def test_quick_start_is_run_demo_test():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in quick.strip().splitlines()] == ["make run", "make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: bootstrap\n\t@scripts/run.sh$", makefile, re.M)
    assert re.search(r"^demo: bootstrap\n\t@BYBIT_ENV=sim scripts/run.sh$", makefile, re.M)
    assert re.search(r"^settings:\n\t@\$\(PY\) -m common.config --write$", makefile, re.M)

import pytest

from common.config import ConfigError, load_settings

BASE = {"BYBIT_ENV": "sim"}


def test_defaults_point_at_mainnet():
    s = load_settings({})
    assert s.bybit_env == "mainnet"
    assert s.ws_public_base == "wss://stream.bybit.com/v5/public"
    assert s.ws_private_url == "wss://stream.bybit.com/v5/private"
    assert not s.has_private


def test_sim_env_points_at_the_simulator():
    s = load_settings({"BYBIT_ENV": "sim", "SIM_PORT": "9001"})
    assert s.ws_public_base == "ws://127.0.0.1:9001/v5/public"
    assert s.rest_url == "http://127.0.0.1:9001"


def test_demo_takes_public_data_from_mainnet():
    s = load_settings({"BYBIT_ENV": "demo"})
    assert s.ws_public_base.startswith("wss://stream.bybit.com/")
    assert s.ws_private_url == "wss://stream-demo.bybit.com/v5/private"


def test_url_overrides_win():
    s = load_settings({"BYBIT_ENV": "testnet", "BYBIT_WS_PUBLIC_URL": "ws://127.0.0.1:1/v5/public/"})
    assert s.ws_public_base == "ws://127.0.0.1:1/v5/public"


@pytest.mark.parametrize("env, setting", [
    ({"BYBIT_ENV": "prod"}, "BYBIT_ENV"),
    ({"SIM_PORT": "eighty"}, "SIM_PORT"),
    ({"SIM_PORT": "70000"}, "SIM_PORT"),
    ({"GW_PING_INTERVAL_S": "-1"}, "GW_PING_INTERVAL_S"),
    ({"GW_PING_INTERVAL_S": "20", "GW_DEAD_AFTER_S": "10"}, "GW_DEAD_AFTER_S"),
    ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
    ({"RABBITMQ_URL": "amqp://"}, "RABBITMQ_URL"),
    ({"BYBIT_API_KEY": "k"}, "BYBIT_API_KEY"),
    ({"BYBIT_MAX_ACTIVE_TIME": "5s"}, "BYBIT_MAX_ACTIVE_TIME"),
    ({"BYBIT_MAX_ACTIVE_TIME": "11m"}, "BYBIT_MAX_ACTIVE_TIME"),
    ({"GW_LOG_LEVEL": "loud"}, "GW_LOG_LEVEL"),
    ({"API_BIND": "no port"}, "API_BIND"),
    ({"GW_BACKOFF_MAX_S": "60"}, "GW_BACKOFF_MAX_S"),
    ({"PUBLISHER_BACKOFF_MAX_S": "0"}, "PUBLISHER_BACKOFF_MAX_S"),
    ({"PUBLISHER_BACKOFF_MAX_S": "31"}, "PUBLISHER_BACKOFF_MAX_S"),
])
def test_bad_settings_are_named(env, setting):
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert str(err.value).startswith(setting)


def test_secrets_never_in_repr_or_describe():
    s = load_settings({"BYBIT_API_KEY": "KEY123", "BYBIT_API_SECRET": "SECRET456", "API_KEY": "APIKEY789",
                       "DATABASE_URL": "postgresql://u:dbpass@h/db"})
    text = repr(s) + str(s.describe())
    for secret in ("KEY123", "SECRET456", "APIKEY789", "dbpass"):
        assert secret not in text
    assert s.describe()["database_url"] == "postgresql://u:***@h/db"

"""Server config: embedded defaults < YAML file < command-line overrides; unknown keys rejected."""

from __future__ import annotations

import pytest

from autolrs.server.config import (ConfigError, ServerConfig, available_cores, job_tuner_config, load_config,
                                   load_defaults)


def test_embedded_defaults():
    d = load_defaults()
    assert d == {"server": {"host": "127.0.0.1", "port": 5555, "state_dir": "autolrs-state",
                            "max_message_bytes": 1048576, "fsync": False, "workers": 16, "processes": "auto",
                            "tuner_timeout_s": 60, "max_sessions": 1000, "lease_s": 3600, "secret_file": None,
                            "auth_window_s": 120, "allow_insecure": False, "curve_secret_key_file": None,
                            "max_sessions_per_peer": 250, "max_backlog_bytes": 67108864, "admin_token_file": None,
                            "http_host": "127.0.0.1", "http_port": None}, "tuners": {}}
    c = load_config()
    assert c == ServerConfig(host="127.0.0.1", port=5555, state_dir="autolrs-state",
                             max_message_bytes=1048576, fsync=False, tuners={}, workers=16,
                             processes=available_cores(), tuner_timeout_s=60.0, max_sessions=1000,
                             lease_s=3600.0, secret_file=None, auth_window_s=120.0, allow_insecure=False)


@pytest.mark.parametrize("value, expected", [("auto", available_cores()), (0, 0), (3, 3), ("2", 2)])
def test_processes(value, expected):
    assert load_config(overrides={"server": {"processes": value}}).processes == expected


@pytest.mark.parametrize("value", [-1, "many", 1.5, 2000, True])
def test_bad_processes(value):
    with pytest.raises(ConfigError, match="server.processes must be auto or an integer"):
        load_config(overrides={"server": {"processes": value}})


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 6000\n  fsync: true\ntuners:\n  cosine: {T_0: 300, eta_min: 1e-5}\n"
                    "  step: {gamma: 0.5}\n")
    c = load_config(path, {"server": {"port": 0, "host": "0.0.0.0"}, "tuners": {"cosine": {"T_mult": 2}}})
    assert (c.host, c.port, c.fsync, c.state_dir) == ("0.0.0.0", 0, True, "autolrs-state")
    assert c.tuners == {"cosine": {"T_0": 300, "eta_min": "1e-5", "T_mult": 2}, "step": {"gamma": 0.5}}


def test_empty_yaml_is_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == load_config()


@pytest.mark.parametrize("text, fragment", [
    ("serve:\n  port: 1\n", "unknown key 'serve'"),
    ("server:\n  prot: 1\n", "unknown key 'server.prot'"),
    ("tuners:\n  cosinus: {}\n", "'tuners.cosinus' is not a registered tuner"),
    ("tuners:\n  cosine: {T0: 5}\n", "unknown knob 'tuners.cosine.T0'"),
    ("tuners:\n  step: {T_0: 5}\n", "unknown knob 'tuners.step.T_0'"),
    ("tuners:\n  cosine: {max_steps: 5}\n", "set per job by the client"),
    ("tuners:\n  cosine: 3\n", "must be a mapping"),
    ("server: 3\n", "must be a mapping"),
    ("- 1\n- 2\n", "mapping at the top level"),
    ("server: {port: [\n", "not valid YAML"),
    ("server:\n  port: 70000\n", "server.port"),
    ("server:\n  port: eighty\n", "server.port"),
    ("server:\n  fsync: maybe\n", "server.fsync"),
    ("server:\n  max_message_bytes: 10\n", "server.max_message_bytes"),
    ("server:\n  host: ''\n", "server.host"),
])
def test_bad_yaml_is_a_clear_error(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_override_errors_name_the_source():
    with pytest.raises(ConfigError, match="command line: unknown key 'server.colour'"):
        load_config(overrides={"server": {"colour": "blue"}})


def test_port_string_from_command_line():
    assert load_config(overrides={"server": {"port": "0"}}).port == 0


def test_job_tuner_config_precedence():
    c = load_config(overrides={"tuners": {"cosine": {"T_0": 10, "chunk": 50}}})
    job = {"initial_lr": 0.3, "max_steps": None, "has_val_fn": True, "param_groups": 2, "step": 5}
    got = job_tuner_config(c, "cosine", {"T_0": 20, "max_steps": 100, "initial_lr": 9.0}, job)
    # server default < hello config < job keys; a null job key keeps the lower layer's value;
    # hello fields that are not job keys (param_groups, step) never reach the tuner
    assert got == {"T_0": 20, "chunk": 50, "max_steps": 100, "initial_lr": 0.3, "has_val_fn": True}
    assert job_tuner_config(c, "step", None, {"initial_lr": 0.1}) == {"initial_lr": 0.1}
    assert c.tuners["cosine"] == {"T_0": 10, "chunk": 50}  # not mutated


def test_one_config_error_class_for_tuners_and_server():
    import autolrs.errors
    import autolrs.tuners

    assert ConfigError is autolrs.errors.ConfigError is autolrs.tuners.ConfigError
    with pytest.raises(autolrs.errors.ConfigError):
        autolrs.tuners.make_tuner("cosine", {"T_0": -1})

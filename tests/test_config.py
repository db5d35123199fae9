"""Configuration: file, environment and flags, in that order of precedence, checked once."""

from pathlib import Path

import pytest

from node.config import ConfigError, load_config


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    file = tmp_path / "node.toml"
    file.write_text('[node]\ndata_dir = "d"\nport = 9000\nmax_queue = 5\norigin = "a.example/l"\n')
    config = load_config(file=file, env={"CONSENT_LEDGER_PORT": "9100",
                                         "CONSENT_LEDGER_MAX_QUEUE": "7"}, port=9200)
    assert config.data_dir == tmp_path / "d"  # relative to the file
    assert config.port == 9200
    assert config.max_queue == 7
    assert config.origin == "a.example/l"
    assert config.log_key_path == tmp_path / "d" / "log.key"


def test_key_files_can_be_given(tmp_path: Path) -> None:
    config = load_config(env={}, data_dir=tmp_path, log_key_file=tmp_path / "k" / "log.pem",
                         operator_key_file="/secrets/operator.pem")
    assert config.log_key_path == tmp_path / "k" / "log.pem"
    assert config.operator_key_path == Path("/secrets/operator.pem")


@pytest.mark.parametrize("text, word", [
    ("[node]\nport = 70000\n", "port"),
    ("[node]\nport = 'x'\n", "port"),
    ("[node]\ncolour = 'blue'\n", "colour"),
    ("[node\n", "TOML"),
    ("[node]\nmax_queue = 0\n", "max_queue"),
    ("[node]\nintake_bytes = 0\n", "intake_bytes"),
    ("[node]\nlog_level = 'loud'\n", "log_level"),
    ("[node]\ndecode_process = 'maybe'\n", "decode_process must be true or false"),
    ("[node]\ndecode_process = 1.5\n", "decode_process"),
])
def test_bad_settings_are_named(tmp_path: Path, text: str, word: str) -> None:
    file = tmp_path / "node.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(file=file, env={}, data_dir=tmp_path)
    assert word in str(err.value)


@pytest.mark.parametrize("file_value, env_value, expected", [
    ("", None, True),
    ("decode_process = false", None, False),
    ("decode_process = true", "off", False),
    ("decode_process = false", "1", True),
])
def test_the_decoding_process_can_be_switched_off(
        tmp_path: Path, file_value: str, env_value: str | None, expected: bool) -> None:
    file = tmp_path / "node.toml"
    file.write_text(f"[node]\n{file_value}\n")
    env = {} if env_value is None else {"CONSENT_LEDGER_DECODE_PROCESS": env_value}
    assert load_config(file=file, env=env, data_dir=tmp_path).decode_process is expected


def test_data_dir_is_required() -> None:
    with pytest.raises(ConfigError, match="--data"):
        load_config(env={})

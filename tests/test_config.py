"""Broken config says which file, which key and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
GOOD_AMI = '[ami]\nhost = "127.0.0.1"\nport = 5038\nusername = "gateway"\nsecret_env = "AMI_SECRET"\n'


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_example_config_is_valid() -> None:
    config = load_config(REPO / "config" / "example.toml",
                         {"CTI_AMI_SECRET": "s3cret", "CTI_HTTP_SECRET": "0123456789abcdef-http",
                          "CTI_ZADARMA_SECRET": "z"})
    assert config.ami is not None and config.ami.secret.value == "s3cret"
    assert config.agent_devices()["PJSIP/101"] == "101"
    (zadarma,) = config.webhooks.accounts
    assert (zadarma.provider, zadarma.name, zadarma.secrets["secret"].value, zadarma.allowed_ips) == (
        "zadarma", "main", "z", ("185.45.152.40/30",))
    assert config.webhooks.public_base_url == "https://gw.example.com"
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.ami.secret)
    assert "0123456789abcdef-http" not in repr(config)
    assert [u.login for u in config.users] == ["anna", "boris", "vera", "olga", "mark", "admin"]
    assert config.users[0].extensions == ("101",) and config.users[3].leads == ("sales",)
    assert "scrypt" not in repr(config.users[0])  # hashes stay out of logs too


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD_AMI.replace("5038", '"abc"'), "[ami] port: expected an integer 1-65535, got 'abc'"),
        (GOOD_AMI.replace("5038", "70000"), "[ami] port: expected an integer 1-65535, got 70000"),
        (GOOD_AMI.replace('secret_env = "AMI_SECRET"', ""), "[ami] secret_env: expected secret_env or secret_file"),
        (GOOD_AMI.replace("AMI_SECRET", "NOT_SET_ANYWHERE"), "environment variable NOT_SET_ANYWHERE is not set"),
        (GOOD_AMI + "hots = 1\n", "[ami] hots: unknown key"),
        (GOOD_AMI + "[stroe]\n", "[stroe]: unknown section"),
        (GOOD_AMI + "[[agents]]\nname = 'x'\n", "[agents #1] extension: expected a non-empty string"),
        (GOOD_AMI + "[[agents]]\nextension = '101'\ndevices = ['101']\n", "[agents #1] devices: expected a list"),
        (GOOD_AMI + "[http]\nport = true\n", "[http] port: expected an integer"),
        ("[ami\n", "not valid TOML"),
        (GOOD_AMI + "[http]\nsecret_env = 'AMI_SECRET'\n", "[http] secret_env: expected a secret of at least 16"),
        (GOOD_AMI + "[http]\nallowed_origins = ['crm.example.com']\n", "[http] allowed_origins: expected origins"),
        (GOOD_AMI + "[[users]]\nlogin = 'a'\nrole = 'boss'\npassword_hash = 'x'\n", "[users #1] role: expected one of"),
        (GOOD_AMI + "[[users]]\nlogin = 'a'\nrole = 'agent'\npassword_hash = 'plain'\n",
         "[users #1] password_hash: expected a hash made by `cti-gateway hash-password`"),
        (GOOD_AMI + "[[users]]\nlogin = 'a'\nrole = 'marketer'\nextensions = ['101']\npassword_hash = 'scrypt$1$2$3$4$5'\n",
         "[users #1] extensions: expected no extensions"),
        # TOML has nan and inf; no count, target or price may be one.
        (GOOD_AMI + "[kpi]\ndaily_target = nan\n", "[kpi] daily_target: expected points a day, a number >= 0, got nan"),
        (GOOD_AMI + "[kpi]\npoints = { meeting = inf }\n", "[kpi] points.meeting: expected a number of points >= 0"),
        (GOOD_AMI + "[[users]]\nlogin = 'a'\nrole = 'agent'\ndaily_target = -inf\npassword_hash = 'scrypt$1$2$3$4$5'\n",
         "[users #1] daily_target: expected KPI points a day, a number >= 0, got -inf"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {"AMI_SECRET": "x"})
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_secret_file_and_relative_store_path(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("from-file\n")
    path = _write(tmp_path, GOOD_AMI.replace('secret_env = "AMI_SECRET"', 'secret_file = "secret.txt"')
                  + '[store]\npath = "data/gw.sqlite3"\n')
    config = load_config(path, {})
    assert config.ami is not None and config.ami.secret.value == "from-file"
    assert config.store.path == tmp_path / "data" / "gw.sqlite3"


def test_check_config_command_exits_nonzero_on_bad_config(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_AMI.replace("5038", "0"))
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)],
                            capture_output=True, text=True, cwd=REPO, env={"AMI_SECRET": "x", "PATH": ""})
    assert result.returncode == 2
    assert "[ami] port" in result.stderr and str(path) in result.stderr


def test_the_example_s_commented_crm_sinks_are_valid_once_uncommented(tmp_path: Path) -> None:
    """config/example.toml shows one sink of each kind, commented out: uncommented, they load."""
    text = (REPO / "config" / "example.toml").read_text(encoding="utf-8")
    start, end = text.index("# [crm]\n"), text.index("[recordings]")
    block = "\n".join(line[2:] if line.startswith("# ") else "" if line == "#" else line
                      for line in text[start:end].splitlines())
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(text[:start] + block + "\n" + text[end:], encoding="utf-8")
    env = {"CTI_AMI_SECRET": "s3cret", "CTI_HTTP_SECRET": "0123456789abcdef-http", "CTI_ZADARMA_SECRET": "z",
           "CTI_ERP_WEBHOOK_SECRET": "x" * 24, "CTI_B24_WEBHOOK": "https://example.bitrix24.ru/rest/1/c0de/",
           "CTI_B24_APP_TOKEN": "app-token", "CTI_AMO_TOKEN": "amo-token", "CTI_1C_PASSWORD": "1c-password"}
    config = load_config(config_file, environ=env)
    assert [(sink.kind, sink.name) for sink in config.crm.sinks] == [
        ("webhook", "erp"), ("bitrix24", "b24"), ("amocrm", "amo"), ("onec", "1c")]
    assert config.crm.public_base_url == "https://cti.example.ru"

"""Every `serve` flag also comes from PARAKEET_<FLAG> and from `--config server.yaml`; the command
line wins over the environment, which wins over the file; `serve --help` documents all of it."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import yaml

from parakeet_streaming.cli import _settable, build_parser, config_from_args, env_name, parse_args

SERVE = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
ACTIONS = _settable(SERVE)


def sample(action: argparse.Action) -> tuple[str, object]:
    """A valid value for the flag that is not its default: (as text, as parsed)."""
    if isinstance(action, argparse._AppendAction):
        return "k1,k2", ["k1", "k2"]
    if isinstance(action, argparse._StoreTrueAction):
        return "true", True
    if action.choices is not None:
        choice = next(c for c in action.choices if c != action.default)
        return str(choice), choice
    if action.type is int:
        return "4321", 4321
    if action.type is float:
        return "2.5", 2.5
    if action.type is not None:  # --att-context-size, --threads: the first text their parser takes
        for text in ("70,6", "3"):
            try:
                return text, action.type(text)
            except argparse.ArgumentTypeError:
                pass
    return "some-value", "some-value"


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a.option_strings[-1])
def test_every_flag_from_the_environment(action) -> None:
    text, value = sample(action)
    args = parse_args(["serve"], {env_name(action): text})
    assert getattr(args, action.dest) == value
    assert getattr(parse_args(["serve"], {}), action.dest) == action.default


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a.option_strings[-1])
def test_every_flag_from_the_config_file(action, tmp_path) -> None:
    text, value = sample(action)
    key = action.option_strings[-1].removeprefix("--")
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump({key: yaml.safe_load(text) if "," not in text else text}))
    assert getattr(parse_args(["serve", "--config", str(path)], {}), action.dest) == value


def test_precedence_command_line_then_environment_then_file(tmp_path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("ws-port: 9001\nport: 9002\nstatus_port: 9003\napi-key: [from-file]\n")
    env = {"PARAKEET_WS_PORT": "9101", "PARAKEET_PORT": "9102", "PARAKEET_API_KEY": "from-env"}
    c = config_from_args(parse_args(["serve", "--config", str(path), "--ws-port", "9201"], env))
    assert (c.ws_port, c.port, c.status_port, c.api_keys) == (9201, 9102, 9003, ["from-env"])
    c = config_from_args(parse_args(["serve", "--api-key", "a", "--api-key", "b"], env))
    assert c.api_keys == ["a", "b"]  # a repeatable flag replaces the environment's list
    assert config_from_args(parse_args(["serve"], {"PARAKEET_CONFIG": str(path)})).port == 9002


@pytest.mark.parametrize("content,env,needle", [
    ("wsport: 9000\n", {}, "'wsport' is not a serve setting"),
    ("dtype: int8\n", {}, "dtype: 'int8': choose from"),
    ("- ws-port\n", {}, "expected settings"),
    ("ws-port: [\n", {}, "not valid YAML"),
    ("", {"PARAKEET_ATT_CONTEXT_SIZE": "seventy"}, "PARAKEET_ATT_CONTEXT_SIZE='seventy': expected LEFT,RIGHT"),
])
def test_bad_settings_are_one_line_usage_errors(tmp_path, content, env, needle) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(content)
    out = subprocess.run([sys.executable, "-m", "parakeet_streaming.cli", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=60, env={"PATH": "", **env})
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr, out.stderr


def test_help_names_a_default_and_the_variable_for_every_flag() -> None:
    for action in ACTIONS:
        assert action.help and "default" in action.help and env_name(action) in action.help, action.option_strings
    out = subprocess.run([sys.executable, "-m", "parakeet_streaming.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for action in ACTIONS:
        assert env_name(action) + "]" in out.split(), action.option_strings
    assert "command line wins over the environment" in " ".join(out.split())

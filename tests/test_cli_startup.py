"""``meterline --help`` and the commands that talk to a server start without loading the server
stack. A structural check in a fresh interpreter (which modules got imported), not a timing one;
the start-up times are in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

# what the server and the data-directory commands need, and no client command does
SERVER_STACK = (
    "starlette",
    "uvicorn",
    "meterline.api",
    "meterline.adapters",
    "meterline.config",
    "pydantic",
    "jsonpath",
    "jinja2",
    "babel",
    "prometheus_client",
    "yaml",
)
# libraries only some commands need, so listing the commands loads none of them
CLIENT_ONLY = ("httpx", "rich")

_PROBE = """
import json, sys
from meterline.cli.main import main
sys.argv = ["meterline", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.__stderr__)
"""


def loaded_modules(*args: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``meterline ARGS``."""
    r = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60)
    return set(json.loads(r.stderr.splitlines()[-1]))


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return [p for p in packages if any(m == p or m.startswith(p + ".") for m in modules)]


@pytest.mark.parametrize("args", [("--help",), ("billing", "--help"), ("alerts", "rules", "create", "--help")])
def test_help_loads_neither_the_server_stack_nor_the_client(args: tuple[str, ...]) -> None:
    modules = loaded_modules(*args)
    assert "meterline.cli.alert_cmds" in modules  # every command was registered
    assert loaded(modules, SERVER_STACK + CLIENT_ONLY) == []


@pytest.mark.parametrize(
    "command", [("meters", "list"), ("usage", "tokens"), ("customers", "list"), ("billing", "invoices")], ids=" ".join
)
def test_client_commands_do_not_load_the_server_stack(command: tuple[str, ...]) -> None:
    modules = loaded_modules(*command, "--url", f"http://127.0.0.1:{free_port()}", "--api-key", "k")
    assert "httpx" in modules  # it did try to reach the server
    assert loaded(modules, SERVER_STACK) == []


def test_the_probe_sees_the_server_stack_when_it_is_loaded(tmp_path: Path) -> None:
    # check-config loads the configuration (pydantic): the probe must notice, or it proves nothing
    modules = loaded_modules("check-config", "--data-dir", str(tmp_path))
    assert {"meterline.config", "pydantic"} <= set(loaded(modules, SERVER_STACK))

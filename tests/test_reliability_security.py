"""Security: the dashboard listens on 127.0.0.1 unless exposed deliberately, and no code path reaches a shell.

Covered elsewhere (issue 5, Security):
- spec files may only name files inside data/ or paths given explicitly: tests/test_spec.py
  (test_spec_file_may_not_name_files_outside_data);
- markdown export escapes pipes and newlines in names: tests/test_report_markdown.py
  (test_pipe_and_newline_in_names_cannot_break_a_table).
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from bench.paths import PROJECT_ROOT

# ---------------------------------------------------------------------------------------------- listening address


def test_make_run_binds_the_dashboard_to_localhost_by_default() -> None:
    res = subprocess.run(["make", "-n", "run"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
                         env={k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")})
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "streamlit run app.py" in ln)
    assert "--server.address 127.0.0.1" in line
    exposed = subprocess.run(["make", "-n", "run", "HOST=0.0.0.0"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=30)
    assert "--server.address 0.0.0.0" in exposed.stdout  # the deliberate way the README documents


def test_streamlit_config_and_readme_agree() -> None:
    config = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"  # also for a plain `streamlit run app.py`
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "127.0.0.1" in readme and "HOST=0.0.0.0" in readme


def _listening(port: int) -> list[str]:
    """Local addresses of TCP sockets in LISTEN state on `port` (IPv4 and IPv6), from /proc/net."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            addr, hexport = parts[1].split(":")
            if int(hexport, 16) == port and parts[3] == "0A":
                if width == 8:
                    found.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8))
                    found.append(socket.inet_ntop(socket.AF_INET6, raw))
    return found


@pytest.mark.slow
def test_a_plain_streamlit_run_listens_on_localhost_only(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, BENCH_DB=str(tmp_path / "none.duckdb"))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--browser.gatherUsageStats", "false"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        addrs: list[str] = []
        while time.monotonic() < deadline and not addrs:
            assert proc.poll() is None, "streamlit exited"
            addrs = _listening(port)
            time.sleep(0.2)
        assert addrs == ["127.0.0.1"], addrs
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ---------------------------------------------------------------------------------------------- no shell

SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "execl"), ("os", "execlp"), ("os", "spawnl"),
               ("asyncio", "create_subprocess_shell"), ("pty", "spawn")}
SUBPROCESS_FUNCS = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}


def _python_files() -> list[Path]:
    files = sorted((PROJECT_ROOT / "bench").rglob("*.py")) + sorted((PROJECT_ROOT / "pages").rglob("*.py"))
    return [*files, PROJECT_ROOT / "app.py"]


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def shell_uses(source: str, name: str = "<src>") -> list[str]:
    """Every call that could hand a string to a shell: os.system/os.popen & co, subprocess.* with shell=True or a
    string (not an argument list) as the command, subprocess.getoutput/getstatusoutput."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        dotted = _dotted(node.func)
        where = f"{name}:{node.lineno} {'.'.join(dotted)}"
        if dotted[-2:] in SHELL_CALLS or (len(dotted) == 1 and dotted[0] in {"system", "popen"}):
            found.append(where)
            continue
        if not (dotted and dotted[-1] in SUBPROCESS_FUNCS and (len(dotted) == 1 or dotted[-2] == "subprocess")):
            continue
        if dotted[-1] in ("getoutput", "getstatusoutput"):
            found.append(where)
            continue
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(where + " shell=")
        cmd = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "args"), None)
        if isinstance(cmd, ast.JoinedStr | ast.BinOp) or (isinstance(cmd, ast.Constant) and isinstance(cmd.value, str)):
            found.append(where + " string command")
    return found


def test_the_shell_scanner_finds_each_pattern() -> None:
    bad = """
import os, subprocess
from subprocess import run
os.system("ls")
os.popen("ls")
subprocess.run("ls -l", check=True)
subprocess.Popen(f"echo {x}")
subprocess.call(["ls"], shell=True)
run("a" + b)
subprocess.getoutput("ls")
"""
    assert len(shell_uses(bad)) == 7
    good = 'import subprocess\nsubprocess.run(["ls", "-l"], check=True)\nsubprocess.Popen(argv, shell=False)\n'
    assert shell_uses(good) == []


def test_no_shell_in_the_bench_the_pages_or_the_app() -> None:
    files = _python_files()
    assert len(files) > 20 and any(f.as_posix().endswith("ui/launch.py") for f in files)
    found = [u for f in files for u in shell_uses(f.read_text(), str(f.relative_to(PROJECT_ROOT)))]
    assert found == []

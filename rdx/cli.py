"""The ``rdx`` command: set up, run and inspect a local exchange."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from rdx.toolchain import SetupError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="rdx: the regional data exchange.")

StateDir = typer.Option(Path(".rdx"), "--state-dir", help="where every component keeps its data")
PortOffset = typer.Option(0, "--port-offset", help="add this to every default port (9092, 26657, 8000-8004 ...)")


def fail(message: str) -> None:
    typer.secho(f"rdx: {message}", err=True, fg="red")
    raise typer.Exit(2)


@app.command()
def setup() -> None:
    """Install Kafka, CometBFT and the ABCI modules into ~/.cache/rdx (once per version)."""
    from rdx import toolchain

    started = time.monotonic()
    try:
        toolchain.ensure_all(log=lambda m: typer.echo(f"setup: {m}"))
    except SetupError as exc:
        fail(str(exc))
    typer.echo(f"setup: ready in {time.monotonic() - started:.1f}s")


@app.command()
def up(state_dir: Path = StateDir, port_offset: int = PortOffset,
       detach: bool = typer.Option(False, help="return once healthy; stop with `rdx down`")) -> None:
    """Start Kafka, CometBFT and the five services on loopback; Ctrl-C stops them."""
    from rdx import supervisor

    if supervisor.supervisor_pid(state_dir):
        typer.echo(f"rdx is already running with state directory {state_dir}")
        return
    if detach:
        log_path = state_dir / "logs" / "supervisor.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "rdx", "up", "--state-dir", str(state_dir),
                                 "--port-offset", str(port_offset)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                fail(f"the exchange did not start; see {log_path}:\n"
                     + "\n".join(log_path.read_text().splitlines()[-10:]))
            if supervisor.supervisor_pid(state_dir):
                typer.echo(supervisor.endpoints_text(state_dir))
                return
            time.sleep(0.5)
        proc.terminate()
        fail("the exchange did not become healthy within 180s")
    try:
        raise typer.Exit(supervisor.run_foreground(state_dir, supervisor.Ports().shifted(port_offset)))
    except SetupError as exc:
        fail(str(exc))


@app.command()
def down(state_dir: Path = StateDir) -> None:
    """Stop an exchange started by `rdx up`."""
    from rdx import supervisor

    pid = supervisor.supervisor_pid(state_dir)
    if pid is None:
        left = supervisor.stop_leftovers(state_dir)  # a supervisor that was killed leaves its children
        typer.echo(f"rdx is not running; stopped {len(left)} of its processes left behind" if left else "rdx is not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and supervisor.supervisor_pid(state_dir):
        time.sleep(0.3)
    if supervisor.supervisor_pid(state_dir):
        fail(f"the supervisor (pid {pid}) did not stop within 90s")
    left = supervisor.stop_leftovers(state_dir)
    typer.echo(f"rdx stopped; stopped {len(left)} of its processes left behind" if left else "rdx stopped")


@app.command()
def status(state_dir: Path = StateDir) -> None:
    """Health of every component; exits 0 only when all of them answer."""
    from rdx import supervisor

    try:
        rows = supervisor.status(state_dir)
    except SetupError as exc:
        fail(str(exc))
    for name, url, ok in rows:
        typer.echo(f"{'ok  ' if ok else 'DOWN'} {name:<10} {url}")
    down_ = [name for name, _, ok in rows if not ok]
    if down_:
        fail(f"not healthy: {', '.join(down_)}")


@app.command()
def demo(state_dir: Path = StateDir) -> None:
    """Run the demo against the exchange started with this state directory."""
    from rdx import demo as demo_module, supervisor

    if supervisor.supervisor_pid(state_dir) is None:
        fail(f"no exchange is running with state directory {state_dir}: `make demo` starts one")
    if not demo_module.run(state_dir):
        raise typer.Exit(1)


def main() -> None:
    # `rdx setup` generates the CometBFT protobuf modules that the SDK's verified reads and
    # `rdx verify` import: on a fresh virtual environment it runs before they exist.
    if sys.argv[1:2] != ["setup"]:
        from rdx import deadletters, governance_cli, member_cli, ops, verify

        member_cli.install(app)
        governance_cli.install(app)
        ops.install(app)
        deadletters.install(app)
        verify.install(app)
    app()


if __name__ == "__main__":
    main()

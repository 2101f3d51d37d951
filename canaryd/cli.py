"""The `canaryd` command line (click): run the daemon, validate a config repo, show status, run the demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from canaryd import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="canaryd")
def main() -> None:
    """GitOps progressive delivery for KServe InferenceServices."""


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="CANARYD_CONFIG", help="settings YAML (see README: Configuration)")
def run(config_path: Path | None) -> None:
    """Run the controller until SIGTERM."""
    from pydantic import ValidationError

    from canaryd import logs
    from canaryd.config import load_settings

    try:
        settings = load_settings(config_path)
    except (ValidationError, ValueError, OSError) as exc:
        raise click.ClickException(f"invalid settings ({config_path or 'environment'}): {exc}") from exc
    logs.setup(settings.log_level)
    from canaryd.daemon.runner import Daemon

    sys.exit(Daemon(settings).run_forever())


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".")
@click.option("--default-namespace", default="default", show_default=True)
@click.option("--default-policy", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def validate(path: Path, default_namespace: str, default_policy: Path | None) -> None:
    """Check a config repo checkout: prints `file:line: field: problem`, exit 1 on any error."""
    from canaryd.validate import run_validate

    sys.exit(run_validate(path, default_namespace=default_namespace, default_policy=default_policy))


@main.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file (default: in-cluster)")
@click.option("--context", default=None)
@click.option("-n", "--namespace", default=None, help="only this namespace (default: all)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(kubeconfig: str | None, context: str | None, namespace: str | None, output: str) -> None:
    """Every rolled-out service: phase, weight, revisions, commit and the last verdict."""
    from canaryd.adapters.kube import make_api_client
    from canaryd.adapters.statestore import StateStore
    from canaryd.status import render_table

    states = StateStore(make_api_client(kubeconfig, context)).list(namespace)
    if output == "json":
        out: list[dict[str, Any]] = [s.for_storage() for s in states]
        click.echo(json.dumps(out, indent=2, default=str))
    else:
        click.echo(render_table(states))


@main.command()
@click.option("--keep-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="keep the sandbox's files (repo, logs, kubeconfig) here instead of a temp dir")
@click.option("--kserve-crd", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="InferenceService CRD to load into the API emulator (default: the bundled lite CRD)")
def demo(keep_dir: Path | None, kserve_crd: Path | None) -> None:
    """Run the whole story in a local sandbox: v2 promoted, v3 (errors) and v4 (slow) rolled back."""
    from canaryd.sandbox.demo import run_demo

    sys.exit(run_demo(keep_dir=keep_dir, kserve_crd=kserve_crd))


if __name__ == "__main__":
    main()

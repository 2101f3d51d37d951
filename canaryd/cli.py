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


def _kube_options(fn: Any) -> Any:
    fn = click.option("--context", default=None, help="kubeconfig context")(fn)
    fn = click.option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file (default: in-cluster)")(fn)
    return fn


def _split(service: str, namespace: str | None) -> tuple[str, str]:
    if "/" in service:
        ns, name = service.split("/", 1)
        return ns, name
    return namespace or "default", service


@main.command()
@_kube_options
@click.option("-n", "--namespace", default=None, help="only this namespace (default: all)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-w", "--watch", is_flag=True, help="redraw every 2 seconds until Ctrl-C")
def status(kubeconfig: str | None, context: str | None, namespace: str | None, output: str, watch: bool) -> None:
    """Every rolled-out service: phase, weight, revisions, commit and the last verdict."""
    import time

    from canaryd.adapters.kube import make_api_client
    from canaryd.adapters.statestore import StateStore
    from canaryd.status import render_table

    store = StateStore(make_api_client(kubeconfig, context))
    while True:
        states = store.list(namespace)
        if output == "json":
            out: list[dict[str, Any]] = [s.for_storage() for s in states]
            click.echo(json.dumps(out, indent=2, default=str))
        else:
            if watch:
                click.clear()
            click.echo(render_table(states))
        if not watch:
            return
        time.sleep(2)


@main.command()
@_kube_options
@click.argument("service")
@click.option("-n", "--namespace", default=None, help="namespace (or give SERVICE as NAMESPACE/NAME)")
def history(kubeconfig: str | None, context: str | None, service: str, namespace: str | None) -> None:
    """The transitions and analyses of one service's rollouts, with their numbers."""
    from canaryd.adapters.kube import make_api_client
    from canaryd.adapters.statestore import StateStore
    from canaryd.status import render_history

    ns, name = _split(service, namespace)
    state = StateStore(make_api_client(kubeconfig, context)).load(ns, name)
    if state is None:
        raise click.ClickException(f"no ModelRollout {ns}/{name}")
    click.echo(render_history(state))


def _operator(what: str) -> Any:
    @_kube_options
    @click.argument("service")
    @click.option("-n", "--namespace", default=None, help="namespace (or give SERVICE as NAMESPACE/NAME)")
    def command(kubeconfig: str | None, context: str | None, service: str, namespace: str | None) -> None:
        from canaryd.adapters.kube import make_api_client
        from canaryd.operator import OperatorError, request

        ns, name = _split(service, namespace)
        try:
            click.echo(request(make_api_client(kubeconfig, context), ns, name, what))  # type: ignore[arg-type]
        except OperatorError as exc:
            raise click.ClickException(str(exc)) from None

    command.__doc__ = {
        "pause": "Hold a service's rollout where it is (traffic kept); no new rollout starts until resume.",
        "resume": "Undo pause: the rollout continues from where it was held.",
        "promote": "Promote the canary in flight to 100 % now (e.g. past a confirm-promotion gate).",
        "abort": "Roll the canary in flight back; the spec is not retried until Git changes.",
    }[what]
    return main.command(name=what)(command)


for _what in ("pause", "resume", "promote", "abort"):
    _operator(_what)


@main.command()
@_kube_options
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="CANARYD_CONFIG", help="settings YAML: the repo to fetch, namespaces, default policy")
@click.option("--path", "checkout", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="use this local checkout instead of fetching the configured repo")
def plan(kubeconfig: str | None, context: str | None, config_path: Path | None, checkout: Path | None) -> None:
    """What the newest commit would change (create, roll out, supersede, skip), without changing it."""
    import tempfile

    from canaryd.adapters.git import GitSource, GitSyncError
    from canaryd.adapters.kube import make_api_client
    from canaryd.config import load_settings
    from canaryd.desired import load_desired
    from canaryd.plan import plan as make_plan
    from canaryd.plan import render

    settings = load_settings(config_path) if config_path else None
    paths = settings.repo.paths if settings else ["."]
    ns_default = settings.kubernetes.default_namespace if settings else "default"
    allowed = (settings.kubernetes.namespaces or None) if settings else None
    policy = settings.load_default_policy() if settings else None
    commit: str | None = None
    with tempfile.TemporaryDirectory(prefix="canaryd-plan-") as tmp:
        root = checkout
        if root is None:
            if settings is None:
                raise click.ClickException("give --config (to fetch the configured repo) or --path CHECKOUT")
            r = settings.repo
            try:
                res = GitSource(r.url, branch=r.branch, workdir=Path(tmp) / "repo", paths=r.paths, depth=1).sync()
            except GitSyncError as exc:
                raise click.ClickException(str(exc)) from None
            root, commit = res.root, res.commit
        ds = load_desired(root, paths, ns_default, policy, allowed)
        kc = kubeconfig or (settings.kubernetes.kubeconfig if settings else None)
        lines = make_plan(make_api_client(kc, context), ds, commit)
    for err in ds.problems:
        click.echo(f"error: {err}", err=True)
    click.echo(render(lines))


@main.command()
@click.option("--keep-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="keep the sandbox's files (repo, logs, kubeconfig) here instead of a temp dir")
@click.option("--kserve-crd", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="InferenceService CRD to load into the API emulator (default: the bundled lite CRD)")
def demo(keep_dir: Path | None, kserve_crd: Path | None) -> None:
    """Run the whole story in a local sandbox: v2 promoted, v3 (errors) and v4 (slow) rolled back."""
    import importlib.util

    if importlib.util.find_spec("jsonpatch") is None:  # the sandbox's only extra dependency
        raise click.ClickException(
            "the demo runs a sandbox whose dependencies are an extra: pip install 'canaryd[sandbox]'"
            " (or run `bash scripts/demo.sh` in a checkout)")
    from canaryd.sandbox.demo import run_demo

    sys.exit(run_demo(keep_dir=keep_dir, kserve_crd=kserve_crd))


if __name__ == "__main__":
    main()

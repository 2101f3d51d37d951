"""The `canaryd` command line (click): run the daemon, validate a config repo, show status, run the demo."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from canaryd import __version__

if TYPE_CHECKING:
    from canaryd.client import Client


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


#: Exit codes of the commands that talk to the cluster (README, "CLI"): a pipeline tells a rollout that
#: failed from one it could not check.
EXIT_ROLLED_BACK = 1
EXIT_TIMEOUT = 3
EXIT_CLUSTER = 4


class ClusterError(click.ClickException):
    """The cluster could not be asked (no kubeconfig, unreachable, refused, a state canaryd does not trust):
    one line."""

    exit_code = EXIT_CLUSTER


def _kube_options(fn: Any) -> Any:
    fn = click.option("--context", default=None, help="kubeconfig context (default: the current one)")(fn)
    fn = click.option("--kubeconfig", default=None,
                      help="kubeconfig file(s), as kubectl: default $KUBECONFIG, then ~/.kube/config, then"
                           " the pod's service account")(fn)
    return fn


@contextmanager
def _cluster(kubeconfig: str | None, context: str | None) -> Iterator[Client]:
    """A connected `Client`, with every failure to reach or ask the cluster turned into one line."""
    import logging

    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from canaryd.adapters.kube import KubeError, error_from
    from canaryd.client import Client, ClientError
    from canaryd.rollout.state import UntrustedState

    # The API calls' retry warnings are for the daemon's log; a person gets the one line below.
    logger = logging.getLogger("canaryd")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        rollouts = Client.connect(kubeconfig, context)
    except KubeError as exc:
        logger.setLevel(level)
        raise ClusterError(_one_line(str(exc))) from None
    host = rollouts.host
    try:
        with rollouts:
            yield rollouts
    except KubeError as exc:
        text = f"cannot reach the Kubernetes API at {host}: {_transport(str(exc))}" if exc.status is None else str(exc)
        raise ClusterError(_one_line(text)) from None
    except UntrustedState as exc:
        raise ClusterError(_one_line(str(exc))) from None
    except ClientError as exc:  # no such rollout, or a request that cannot apply: the person's error
        raise click.ClickException(_one_line(str(exc))) from None
    except (ApiException, HTTPError, OSError) as exc:
        raise ClusterError(_one_line(str(error_from(exc, f"ask the Kubernetes API at {host}")))) from None
    finally:
        logger.setLevel(level)


def _transport(text: str) -> str:
    """The reason in a transport failure's text (urllib3 nests it in reprs): "Connection refused", "timed
    out", "Name or service not known"...; the text itself when none is found."""
    import re

    found = re.search(r"\[Errno -?\d+\] ([^\"'()]+)", text) or re.search(r"(timed out|Read timed out)", text)
    attempts = re.search(r"\(gave up after [^)]*\)", text)
    if found is None:
        return text
    return found.group(1).strip() + (f" {attempts.group(0)}" if attempts else "")


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _split(service: str, namespace: str | None) -> tuple[str, str]:
    if "/" in service:
        ns, name = service.split("/", 1)
        return ns, name
    return namespace or "default", service


def _parse_timeout(value: str) -> float:
    from canaryd.durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--timeout") from None


@main.command()
@_kube_options
@click.argument("service", required=False)
@click.option("-n", "--namespace", default=None, help="namespace (default: all; with SERVICE: default)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-w", "--watch", is_flag=True, help="redraw every 2 seconds until Ctrl-C")
@click.option("--wait", is_flag=True,
              help="with SERVICE: wait until its rollout ends; exit 0 promoted, 1 rolled back or aborted,"
                   " 3 timed out, 4 cluster unreachable")
@click.option("--timeout", default="15m", show_default=True, help="with --wait: give up after this long")
@click.option("--commit", default=None, help="with --wait: only a rollout of this commit (SHA or prefix) counts")
def status(kubeconfig: str | None, context: str | None, service: str | None, namespace: str | None, output: str,
           watch: bool, wait: bool, timeout: str, commit: str | None) -> None:
    """Rolled-out services: phase, step, weight, revisions, commit and the last verdict.

    Without SERVICE every service (in -n NAMESPACE); with SERVICE (NAME or NAMESPACE/NAME) that one.
    `--wait` is for deploy pipelines: it follows the rollout and exits with its outcome.
    """
    import re
    import time

    from canaryd.status import render_table

    if (wait or commit) and service is None:
        raise click.UsageError("--wait and --commit need a SERVICE")
    if commit and not wait:
        raise click.UsageError("--commit goes with --wait")
    if commit is not None and not re.fullmatch(r"[0-9a-fA-F]{4,64}", commit):
        raise click.BadParameter(f"{commit[:80]!r} is not a commit SHA or a prefix of at least 4 hex digits",
                                 param_hint="--commit")
    timeout_s = _parse_timeout(timeout)
    with _cluster(kubeconfig, context) as rollouts:
        if wait and service is not None:
            ns, name = _split(service, namespace)
            _wait(rollouts, ns, name, commit, timeout_s, output)
            return
        while True:
            if service is not None:
                ns, name = _split(service, namespace)
                shown = [rollouts.get(name, ns)]
            else:
                shown = rollouts.list(namespace)
            if output == "json":
                click.echo(json.dumps([r.state.for_storage() for r in shown], indent=2, default=str))
            else:
                if watch:
                    click.clear()
                click.echo(render_table([r.state for r in shown]))
            if not watch:
                return
            time.sleep(2)


def _wait(rollouts: Client, ns: str, name: str, commit: str | None, timeout_s: float, output: str) -> None:
    from canaryd.client import Rollout, RolloutFailed, WaitTimeout

    def show(r: Rollout) -> None:
        if output == "table":
            click.echo(f"{r.key}: {r.phase} step {r.step_label} at {r.weight}% ({r.component}, commit "
                       f"{(r.commit or '-')[:8]}){': ' + r.message if r.message else ''}", err=True)

    def final(r: Rollout | None) -> None:
        if output == "json" and r is not None:
            click.echo(json.dumps(r.state.for_storage(), indent=2, default=str))

    try:
        done = rollouts.wait(name, ns, commit=commit, timeout_s=timeout_s, on_change=show)
    except RolloutFailed as exc:
        final(exc.rollout)
        click.echo(f"{exc.rollout.key}: {exc.rollout.phase}: {exc.rollout.message}", err=True)
        sys.exit(EXIT_ROLLED_BACK)
    except WaitTimeout as exc:
        final(exc.rollout)
        click.echo(f"timed out: {exc}", err=True)
        sys.exit(EXIT_TIMEOUT)
    final(done)
    if output == "table":
        click.echo(f"{done.key}: {done.phase} (commit {(done.commit or '-')[:8]})")


@main.command()
@_kube_options
@click.argument("service")
@click.option("-n", "--namespace", default=None, help="namespace (or give SERVICE as NAMESPACE/NAME)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def history(kubeconfig: str | None, context: str | None, service: str, namespace: str | None, output: str) -> None:
    """The transitions and analyses of one service's rollouts, with their numbers."""
    from canaryd.status import history_json, render_history

    ns, name = _split(service, namespace)
    with _cluster(kubeconfig, context) as rollouts:
        state = rollouts.get(name, ns).state
    click.echo(json.dumps(history_json(state), indent=2, default=str) if output == "json" else render_history(state))


def _operator(what: str) -> Any:
    @_kube_options
    @click.argument("service")
    @click.option("-n", "--namespace", default=None, help="namespace (or give SERVICE as NAMESPACE/NAME)")
    def command(kubeconfig: str | None, context: str | None, service: str, namespace: str | None) -> None:
        ns, name = _split(service, namespace)
        with _cluster(kubeconfig, context) as rollouts:
            click.echo(getattr(rollouts, what)(name, ns))

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
    from canaryd.adapters.kube import KubeError, discover_api_client
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
        try:
            lines = make_plan(discover_api_client(kc, context), ds, commit)
        except KubeError as exc:
            raise ClusterError(_one_line(str(exc))) from None
    for err in ds.problems:
        click.echo(f"error: {err}", err=True)
    click.echo(render(lines))


@main.command()
def schema() -> None:
    """Print the RolloutPolicy JSON Schema (draft-07), for editors and CI (also schemas/ in the repo)."""
    from canaryd.schema import render

    click.echo(render(), nl=False)


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

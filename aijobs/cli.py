"""The ``aijobs`` command: one entry point for every process the project runs.

aijobs controlplane up|down|env   a local etcd + kube-apiserver (tests, demo)
aijobs cluster up|down|env|load   a single-node cluster on this machine: pods run (root)
aijobs demo                       the main job, end to end, on this machine
aijobs operator                   the saga operator (kopf)
aijobs service NAME               one of the five HTTP services
aijobs worker                     a GPU (or CPU) inference worker
aijobs chaos [--scenario s1..s4]  a fault campaign, or one of the seed's four stories
aijobs admin …                    platform admins: tenants, credits, users, tokens, a job explained
aijobs submit IMAGE|DIR/ --pipeline …  users: submit a job, or a folder as one batch (wait, download)
aijobs jobs list|get|cancel       users: their jobs
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def state_home() -> Path:
    """Where the developer commands keep what they start: ``$XDG_STATE_HOME/aijobs``."""
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "aijobs"


def _devtools() -> None:
    """The developer commands live in ``aijobs_dev`` (devtools/), which images do not ship."""
    try:
        import aijobs_dev  # noqa: F401
    except ImportError:
        raise SystemExit(
            "this command is a developer tool: run it from a source checkout (`make venv`)"
        ) from None


def _controlplane(args: argparse.Namespace) -> int:
    _devtools()
    from aijobs_dev.controlplane.assets import AssetError, ensure_assets
    from aijobs_dev.controlplane.cluster import ControlPlane, ControlPlaneError

    plane = ControlPlane(Path(args.dir))
    if args.action == "down":
        was_running = plane.running
        plane.stop()
        print("control plane stopped" if was_running else f"no control plane runs from {plane.root}")
        return 0
    if args.action == "env":
        if not plane.running:
            print(f"no control plane runs from {plane.root}; run `aijobs controlplane up`", file=sys.stderr)
            return 1
        print(f"export KUBECONFIG={plane.kubeconfig}")
        return 0
    try:
        assets = ensure_assets(log=lambda msg: print(msg, file=sys.stderr, flush=True))
        plane.start(assets=assets)
    except (AssetError, ControlPlaneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.no_crds:
        from aijobs.crds import install_crds
        from aijobs.kube import api_client

        for name in install_crds(api_client(plane.kubeconfig)):
            print(f"installed CRD {name}", file=sys.stderr)
    print(f"control plane up at {plane.api_url}; stop it with `aijobs controlplane down`", file=sys.stderr)
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    _devtools()
    from aijobs_dev.controlplane.assets import AssetError
    from aijobs_dev.controlplane.cluster import ControlPlaneError
    from aijobs_dev.controlplane.node import NodeCluster

    cluster = NodeCluster(Path(args.dir))
    if args.action == "down":
        was_running = cluster.running
        cluster.stop()
        print("cluster stopped" if was_running else f"no cluster runs from {cluster.root}")
        return 0
    if args.action in ("env", "load") and not cluster.running:
        print(f"no cluster runs from {cluster.root}; run `aijobs cluster up`", file=sys.stderr)
        return 1
    try:
        if args.action == "load":
            for image in args.images:
                loaded = cluster.load_image(image)
                print(f"{'loaded' if loaded else 'already loaded'}: {image}", file=sys.stderr)
            return 0
        if args.action == "up":
            cluster.start(log=lambda msg: print(msg, file=sys.stderr, flush=True))
            print("cluster up: one node, Ready; stop it with `aijobs cluster down`", file=sys.stderr)
    except (AssetError, ControlPlaneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    _devtools()
    from aijobs_dev.demo import run_demo

    return run_demo(keep=args.keep)


def _service(args: argparse.Namespace) -> int:
    import uvicorn
    from aijobs_services.kit.db import migrate
    from aijobs_services.registry import spec

    os.environ["AIJOBS_SERVICE"] = args.name
    if args.database_url:
        os.environ["AIJOBS_DATABASE_URL"] = args.database_url
    from aijobs_services.kit.settings import ServiceSettings

    settings = ServiceSettings()  # type: ignore[call-arg]
    # Migrate once here, not in each worker process (they would race on the schema).
    migrate(settings.sqlalchemy_url(), spec(args.name).migrations)
    if args.migrate_only:
        return 0
    os.environ["AIJOBS_MIGRATE_ON_START"] = "false"
    uvicorn.run(
        "aijobs_services.registry:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level,
        access_log=False,
    )
    return 0


def _chaos(argv: list[str]) -> int:
    _devtools()
    from aijobs_dev.chaos import main as chaos_main

    return chaos_main(argv)


def _operator(_: argparse.Namespace) -> int:
    from aijobs_operator.main import run

    run()
    return 0


def _worker(args: argparse.Namespace) -> int:
    for flag, env in [
        ("device", "AIJOBS_DEVICE"),
        ("spool_dir", "AIJOBS_SPOOL_DIR"),
        ("max_tasks", "AIJOBS_MAX_TASKS"),
        ("model_dir", "AIJOBS_MODEL_DIR"),
    ]:
        if getattr(args, flag) is not None:
            os.environ[env] = str(getattr(args, flag))
    from aijobs_worker.main import run

    run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aijobs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    cp = sub.add_parser("controlplane", help="start or stop a local etcd + kube-apiserver")
    cp.add_argument("action", choices=["up", "down", "env"])
    cp.add_argument("--dir", default=str(state_home() / "controlplane"), help="where its files live")
    cp.add_argument("--no-crds", action="store_true", help="do not install the AIImageJob CRD")
    cp.set_defaults(func=_controlplane)

    cl = sub.add_parser("cluster", help="start or stop a single-node cluster (kubelet, containerd)")
    cl.add_argument("action", choices=["up", "down", "env", "load"])
    cl.add_argument("images", nargs="*", help="load: images of the local Docker engine")
    cl.add_argument("--dir", default=str(state_home() / "cluster"), help="where its files live")
    cl.set_defaults(func=_cluster)

    demo = sub.add_parser("demo", help="run the main job end to end on this machine")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.set_defaults(func=_demo)

    svc = sub.add_parser("service", help="run one of the HTTP services")
    svc.add_argument("name", choices=["payment", "auth", "storage", "ai", "main"])
    svc.add_argument("--host", default=os.environ.get("AIJOBS_HOST", "127.0.0.1"))
    svc.add_argument("--port", type=int, default=int(os.environ.get("AIJOBS_PORT", "8080")))
    svc.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL (default: $AIJOBS_DATABASE_URL, else an SQLite file in the current folder)",
    )
    svc.add_argument("--workers", type=int, default=int(os.environ.get("AIJOBS_WORKERS", "1")))
    svc.add_argument("--migrate-only", action="store_true", help="apply the migrations and exit")
    svc.set_defaults(func=_service)

    # `aijobs chaos ...` hands every argument to the campaign's own parser (see main()); this entry
    # only makes it appear in `aijobs --help`.
    sub.add_parser("chaos", help="run a fault campaign or a seed scenario and check I1-I5")

    op = sub.add_parser("operator", help="run the saga operator (settings: AIJOBS_* environment variables)")
    op.set_defaults(func=_operator)

    wk = sub.add_parser("worker", help="run an inference worker (settings: AIJOBS_* environment variables)")
    wk.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    wk.add_argument("--spool-dir", help="where finished results wait for Storage")
    wk.add_argument("--max-tasks", type=int, help="tasks leased and batched at once, at most (default 64)")
    wk.add_argument("--model-dir", help="folder of users' models (TorchScript)")
    wk.set_defaults(func=_worker)

    from aijobs.console.admin import add_admin_parser
    from aijobs.console.user import add_user_parsers

    add_admin_parser(sub)
    add_user_parsers(sub)
    return parser


def _console(args: argparse.Namespace) -> int:
    """The admin and user commands: their errors are said in a line, not a traceback."""
    from aijobs.console.config import ConfigError, load_config
    from aijobs.console.http import CommandError

    try:
        return int(args.run(args, load_config(args.config)))
    except (CommandError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chaos"]:  # its options belong to the campaign's parser, not to this one
        return _chaos(argv[1:])
    args = build_parser().parse_args(argv)
    if hasattr(args, "run"):
        return _console(args)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        # The client install (`pip install aijobs`) has no server parts: say which extra brings them.
        extra = _EXTRAS.get(args.func)
        if extra is None or not exc.name or exc.name.startswith("aijobs"):
            raise
        raise SystemExit(f"`aijobs {argv[0]}` needs {exc.name}: pip install 'aijobs[{extra}]'") from exc


_EXTRAS = {_operator: "operator", _service: "services", _worker: "worker,torch"}


if __name__ == "__main__":
    raise SystemExit(main())

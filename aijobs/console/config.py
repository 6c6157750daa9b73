"""Where the commands find the services and their credentials.

A TOML file (``$AIJOBS_CONFIG``, else ``~/.config/aijobs/config.toml``; optional)::

    kubeconfig = "~/.kube/config"          # else $KUBECONFIG, else in-cluster
    [services]                             # else $AIJOBS_<NAME>_URL, else this machine's defaults
    main = "https://aijobs.example.com"
    [admin]                                # one of:
    secret_file = "~/.config/aijobs/admin-secret"   # a file holding the admin caller secret
    secret_ref = "aijobs-system/aijobs-callers"     # the chart's callers Secret (key `callers`)
    [user]
    token_file = "~/.config/aijobs/token"           # else $AIJOBS_TOKEN

Secrets are never taken from the command line (it ends up in shell history and ``ps``).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aijobs.api.rules import SERVICE_URLS

__all__ = ["Config", "ConfigError", "PrivateFile", "load_config"]


class ConfigError(Exception):
    """The configuration is missing something a command needs; the message says what."""


def _default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aijobs" / "config.toml"


@dataclass
class Config:
    path: Path
    services: dict[str, str]
    kubeconfig: str | None = None
    admin: dict[str, Any] = field(default_factory=dict)
    user: dict[str, Any] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return self.services[service].rstrip("/")

    def admin_secret(self) -> str:
        """The admin caller's secret: from a file, or from the chart's Secret in the cluster."""
        if env_file := os.environ.get("AIJOBS_ADMIN_SECRET_FILE"):
            return _read_secret_file(Path(env_file))
        if "secret_file" in self.admin:
            return _read_secret_file(Path(str(self.admin["secret_file"])).expanduser())
        if "secret_ref" in self.admin:
            return self._secret_from_cluster(str(self.admin["secret_ref"]))
        raise ConfigError(
            f"no admin credentials: set [admin] secret_file or secret_ref in {self.path} "
            "(or $AIJOBS_ADMIN_SECRET_FILE)"
        )

    def user_token(self) -> str:
        if token := os.environ.get("AIJOBS_TOKEN"):
            return token.strip()
        if "token_file" in self.user:
            return _read_secret_file(Path(str(self.user["token_file"])).expanduser())
        raise ConfigError(f"no API token: set [user] token_file in {self.path} (or $AIJOBS_TOKEN)")

    def _secret_from_cluster(self, ref: str) -> str:
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        from aijobs.kube import api_client

        namespace, _, name = ref.partition("/")
        if not namespace or not name:
            raise ConfigError(f"[admin] secret_ref must be NAMESPACE/NAME, not {ref!r}")
        try:
            secret = k8s.CoreV1Api(api_client(self.kubeconfig)).read_namespaced_secret(name, namespace)
        except ApiException as exc:
            raise ConfigError(f"could not read Secret {ref}: {exc.status} {exc.reason}") from exc
        data = secret.data or {}
        if "callers" not in data:
            raise ConfigError(f"Secret {ref} has no key 'callers' (the chart's callers Secret has)")
        callers = json.loads(base64.b64decode(data["callers"]))
        if not isinstance(callers, dict) or not callers.get("admin"):
            raise ConfigError(f"Secret {ref}: its 'callers' object has no 'admin' entry")
        return str(callers["admin"])


def _read_secret_file(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"{path} is empty")
    return value


def load_config(path: str | None = None) -> Config:
    chosen = Path(path or os.environ.get("AIJOBS_CONFIG") or _default_path()).expanduser()
    doc: dict[str, Any] = {}
    if chosen.exists():
        try:
            doc = tomllib.loads(chosen.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{chosen}: not valid TOML: {exc}") from exc
    elif path or os.environ.get("AIJOBS_CONFIG"):
        raise ConfigError(f"no configuration file at {chosen}")
    if unknown := set(doc) - {"kubeconfig", "services", "admin", "user"}:
        raise ConfigError(f"{chosen}: unknown setting(s) {', '.join(sorted(unknown))}")
    unknown = set(doc.get("services") or {}) - set(SERVICE_URLS)
    if unknown:
        raise ConfigError(
            f"{chosen}: [services] knows {', '.join(SERVICE_URLS)}, not {', '.join(sorted(unknown))}"
        )
    services = {**SERVICE_URLS, **{k: str(v) for k, v in (doc.get("services") or {}).items()}}
    for name in services:  # the environment wins over the file
        services[name] = os.environ.get(f"AIJOBS_{name.upper()}_URL") or services[name]
    kubeconfig = doc.get("kubeconfig")
    return Config(
        path=chosen,
        services=services,
        kubeconfig=str(Path(kubeconfig).expanduser()) if kubeconfig else None,
        admin=dict(doc.get("admin") or {}),
        user=dict(doc.get("user") or {}),
    )


class PrivateFile:
    """A file only its owner may read, written whole or not at all: the text goes to a new file
    created with mode 600 beside ``path``, which then replaces ``path``. Writing into an existing
    file would keep that file's mode (0644 is usual), so its secret would be readable by all.

    Use it as a context manager; a file not committed by the end is removed::

        with PrivateFile(path) as secret:
            secret.commit(token)
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temporary: Path | None = None

    def __enter__(self) -> PrivateFile:
        if self.path.is_dir():
            raise ConfigError(f"{self.path} is a folder; give a file's path")
        try:  # mkstemp creates the file with mode 600 whatever the umask
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as exc:
            raise ConfigError(f"can't write beside {self.path}: {exc.strerror}") from exc
        os.close(fd)
        self._temporary = Path(name)
        return self

    def commit(self, text: str) -> None:
        assert self._temporary is not None, "use PrivateFile as a context manager"
        with self._temporary.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(self._temporary, self.path)
        self._temporary = None

    def __exit__(self, *exc: object) -> None:
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)
            self._temporary = None

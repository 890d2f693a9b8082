"""Typed configuration: one TOML file per node (SPEC §2), loaded with one-line errors."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hasync.errors import ConfigError

DEFAULT_CONFIG = "hasync.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


class ClusterSection(_Section):
    source: str = Field("cluster-1", description="alarm parameter Source")
    service_name: str = Field("Flink", description="alarm parameter ServiceName")
    role_name: str = Field("FlinkServer", description="alarm parameter RoleName")


class NodeSection(_Section):
    name: str = Field(description="unique within the pair")
    hostname: str = Field(default_factory=socket.gethostname, description="alarm parameter HostName")
    listen: str = Field("127.0.0.1:28443", description="address the agent serves on")
    state_dir: Path = Field(Path("state"), description="manifests, sync state, alarm store")
    log_dir: Path = Field(Path("logs"), description="HA run log")

    _v_listen = field_validator("listen")(_host_port)


class PeerSection(_Section):
    name: str = Field(description="the peer node's name")
    address: str = Field(description="the peer agent's host:port")
    hostname: str | None = Field(None, description="the peer's HostName; default: learned from the peer")
    timeout_s: float = Field(10.0, gt=0, description="timeout of one request to the peer")

    _v_address = field_validator("address")(_host_port)


class RoleSection(_Section):
    mode: Literal["static", "zookeeper"] = "static"
    active: str | None = Field(None, description="static mode: the active node's name")
    hosts: str | None = Field(None, description="zookeeper mode: ZooKeeper hosts")
    path: str | None = Field(None, description="zookeeper mode: election path")


class SyncDir(_Section):
    name: str = Field(min_length=1, description="same names on both nodes")
    path: Path = Field(description="local path of this sync dir")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if "/" in v or v in (".", "..") or "\0" in v:
            raise ValueError(f"dir name {v!r} must be a plain name")
        return v


class SyncSection(_Section):
    dirs: tuple[SyncDir, ...] = Field(min_length=1, description="the synchronized directories")
    exclude: tuple[str, ...] = Field((), description="glob patterns, relative to each sync dir")
    full_reconcile_s: float = Field(300.0, gt=0, description="period of the full reconcile")
    retry_s: float = Field(10.0, gt=0, description="retry failed paths after this")
    batch_files: int = Field(2000, gt=0, description="files written per flush")
    batch_bytes: int = Field(64 << 20, gt=0, description="bytes written per flush")


class BackupSection(_Section):
    dir: Path = Field(Path("backup"), description="the local backup directory")
    max_copies: int = Field(5, ge=1, description="maximum number of backup sets kept")
    set_period_s: float = Field(300.0, gt=0, description="a new backup set is started after this")


class CheckSection(_Section):
    interval_s: float = Field(60.0, gt=0, description="sync check period")
    raise_after: int = Field(1, ge=1, description="out-of-sync verdicts in a row that raise the alarm")
    clear_after: int = Field(1, ge=1, description="in-sync verdicts in a row that clear it")
    takeover_after: int = Field(
        3, ge=1, description="checks the standby must be unreachable before the active raises the alarm itself"
    )


class SecuritySection(_Section):
    token_file: Path | None = Field(None, description="the pair's shared secret, one line")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


class NotifySection(_Section):
    kind: Literal["alertmanager", "webhook", "syslog"]
    url: str


class AlarmsSection(_Section):
    store: str = Field("sqlite", description='"sqlite" or a postgresql:// URL')
    notify: tuple[NotifySection, ...] = ()
    resend_s: float = Field(60.0, gt=0, description="Alertmanager: re-send firing alerts this often")
    resolved_retention_s: float = Field(900.0, ge=0, description="Alertmanager: keep re-sending a resolved alert")


class ConsoleUser(_Section):
    name: str
    role: Literal["admin", "viewer"]
    password_hash: str


class ConsoleSection(_Section):
    users: tuple[ConsoleUser, ...] = ()


class DiagnoseSection(_Section):
    on_raise: bool = Field(True, description="diagnose automatically when the alarm is raised")
    auto_fix: bool = Field(False, description="let that automatic diagnosis apply the safe fixes")
    window_s: float = Field(600.0, gt=0, description="ha_log step: seconds before and after the alarm")
    min_free_bytes: int = Field(16 << 20, ge=0, description="storage step: less free space than this is a fault")


class AuditSection(_Section):
    """The background audit (hasync.audit): every file read again and compared with what the node believes."""

    enabled: bool = Field(True, description="run the background audit")
    rate_mb_s: float = Field(10.0, gt=0, le=10_000, description="MB read per second by the audit, at most")
    interval_s: float = Field(
        14_400.0, ge=1, le=30 * 86_400, description="a pass starts this long after the previous one started"
    )


class LogSection(_Section):
    max_bytes: int = Field(20 << 20, gt=0, description="rotate ha.log past this size")
    backup_count: int = Field(10, ge=0, description="rotated files kept")
    level: Literal["DEBUG", "INFO", "WARN", "ERROR"] = "INFO"


class Config(_Section):
    cluster: ClusterSection = ClusterSection()
    node: NodeSection
    peer: PeerSection
    role: RoleSection = RoleSection()
    sync: SyncSection
    backup: BackupSection = BackupSection()
    check: CheckSection = CheckSection()
    security: SecuritySection = SecuritySection()
    alarms: AlarmsSection = AlarmsSection()
    console: ConsoleSection = ConsoleSection()
    diagnose: DiagnoseSection = DiagnoseSection()
    log: LogSection = LogSection()
    audit: AuditSection = AuditSection()

    # Set by `load`, not by the file.
    path: Path = Path(DEFAULT_CONFIG)
    token: str = Field("", repr=False)

    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.node.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def peer_url(self) -> str:
        scheme = "https" if self.security.tls_cert else "http"
        return f"{scheme}://{self.peer.address}"

    def local_url(self) -> str:
        host, port = self.listen_host_port()
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        scheme = "https" if self.security.tls_cert else "http"
        return f"{scheme}://{host}:{port}"

    def sync_dir(self, name: str) -> SyncDir:
        for d in self.sync.dirs:
            if d.name == name:
                return d
        raise KeyError(name)


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts)


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p)


def load(path: str | os.PathLike[str]) -> Config:
    """Load, validate and resolve a node config; raise ConfigError with one line."""
    cfg_path = Path(path)
    try:
        raw = cfg_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{cfg_path}: cannot read config file: {exc.strerror}") from None
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None
    for reserved in ("path", "token"):
        if reserved in data:
            raise ConfigError(f"{cfg_path}: {reserved}: unknown key")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _loc(err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "missing required key"
        raise ConfigError(f"{cfg_path}: {key}: {msg}") from None
    seen: set[str] = set()
    for i, d in enumerate(cfg.sync.dirs):
        if d.name in seen:
            raise ConfigError(f"{cfg_path}: sync.dirs[{i}].name: duplicate dir name {d.name!r}")
        seen.add(d.name)
    base = cfg_path.resolve().parent
    node = cfg.node.model_copy(
        update={"state_dir": _resolve(base, cfg.node.state_dir), "log_dir": _resolve(base, cfg.node.log_dir)}
    )
    dirs = tuple(d.model_copy(update={"path": _resolve(base, d.path)}) for d in cfg.sync.dirs)
    sync = cfg.sync.model_copy(update={"dirs": dirs})
    backup = cfg.backup.model_copy(update={"dir": _resolve(base, cfg.backup.dir)})
    sec = cfg.security
    sec = sec.model_copy(
        update={
            k: _resolve(base, getattr(sec, k))
            for k in ("token_file", "tls_cert", "tls_key", "tls_ca")
            if getattr(sec, k)
        }
    )
    if cfg.role.mode == "static" and cfg.role.active not in (cfg.node.name, cfg.peer.name):
        raise ConfigError(
            f"{cfg_path}: role.active: must name this node ({cfg.node.name!r}) or the peer ({cfg.peer.name!r})"
        )
    if cfg.node.name == cfg.peer.name:
        raise ConfigError(f"{cfg_path}: peer.name: must differ from node.name")
    token = ""
    if sec.token_file is not None:
        try:
            token = sec.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{cfg_path}: security.token_file: cannot read {sec.token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise ConfigError(f"{cfg_path}: security.token_file: {sec.token_file} is empty")
    else:
        raise ConfigError(f"{cfg_path}: security.token_file: missing required key")
    if sec.tls_cert or sec.tls_key or sec.tls_ca:
        raise ConfigError(f"{cfg_path}: security.tls_cert: TLS is not supported yet, use token_file")
    return cfg.model_copy(
        update={"node": node, "sync": sync, "backup": backup, "security": sec, "path": cfg_path, "token": token}
    )

"""Typed configuration: one TOML file per node (SPEC §2), loaded with one-line errors."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from hasync.errors import ConfigError
from hasync.masking import Masker, mask_url, one_line, secrets_in, url_secrets
from hasync.urls import check_notify_url, check_store, notifier_key

DEFAULT_CONFIG = "hasync.toml"


# Upper bounds of the settings with a unit: far above any sane value, low enough that arithmetic on them
# (timeouts, sleeps, sizes) stays finite and within what asyncio and the OS accept.
DAY_S = 86400.0
WEEK_S = 7 * DAY_S
MAX_COUNT = 1_000_000
TiB = 1 << 40


class _Section(BaseModel):
    # inf and nan are refused in every float setting ("interval_s = inf" would mean: never check).
    # Strict: a number must be a TOML number and a flag a TOML boolean (`interval_s = true` or `= "2"` is an
    # error, not 1.0 or 2.0); a TOML integer is still a float (`interval_s = 60`). Paths and arrays say
    # `Strict(False)`: TOML gives str and list for them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


def _no_nul(value: Any) -> Any:
    if "\0" in str(value):
        raise ValueError("must not contain a NUL character")
    return value


def _one_line(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters (newline, tab, NUL...)")
    return value


Name = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_one_line)]
FilePath = Annotated[Path, Strict(False), AfterValidator(_no_nul)]


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


class ClusterSection(_Section):
    source: Name = Field("cluster-1", description="alarm parameter Source")
    service_name: Name = Field("Flink", description="alarm parameter ServiceName")
    role_name: Name = Field("FlinkServer", description="alarm parameter RoleName")


class NodeSection(_Section):
    name: Name = Field(description="unique within the pair")
    hostname: Name = Field(default_factory=socket.gethostname, description="alarm parameter HostName")
    listen: str = Field("127.0.0.1:28443", description="address the agent serves on")
    state_dir: FilePath = Field(Path("state"), description="manifests, sync state, alarm store")
    log_dir: FilePath = Field(Path("logs"), description="HA run log")

    _v_listen = field_validator("listen")(_host_port)


class PeerSection(_Section):
    name: Name = Field(description="the peer node's name")
    address: str = Field(description="the peer agent's host:port")
    hostname: Name | None = Field(None, description="the peer's HostName; default: learned from the peer")
    timeout_s: float = Field(10.0, ge=0.1, le=3600, description="timeout of one request to the peer")

    _v_address = field_validator("address")(_host_port)


class RoleSection(_Section):
    mode: Literal["static", "external", "zookeeper"] = Field(
        "static",
        description="static: roles change only by `hasync switchover`; external: an HA manager (keepalived, "
        "Pacemaker) sets them with `hasync role set`",
    )
    active: str | None = Field(
        None,
        description="the initial active node's name (required in static mode; in external mode, without it "
        "both nodes start as standby); the current role is kept in <state_dir>/role.json",
    )
    hosts: str | None = Field(None, description="zookeeper mode: ZooKeeper hosts")
    path: str | None = Field(None, description="zookeeper mode: election path")


class SyncDir(_Section):
    name: str = Field(min_length=1, max_length=255, description="same names on both nodes")
    path: FilePath = Field(description="local path of this sync dir")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if "/" in v or v in (".", "..") or any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
            raise ValueError(f"dir name {v!r} must be a plain name")
        return v


class SyncSection(_Section):
    dirs: tuple[SyncDir, ...] = Field(min_length=1, strict=False, description="the synchronized directories")
    exclude: tuple[Annotated[str, Field(min_length=1), AfterValidator(_one_line)], ...] = Field(
        (), strict=False, description="glob patterns, relative to each sync dir"
    )
    full_reconcile_s: float = Field(300.0, ge=1, le=WEEK_S, description="period of the full reconcile")
    retry_s: float = Field(10.0, ge=0.1, le=DAY_S, description="retry failed paths after this")
    batch_files: int = Field(2000, ge=1, le=MAX_COUNT, description="files written per flush")
    batch_bytes: int = Field(64 << 20, ge=1, le=TiB, description="bytes written per flush")


class BackupSection(_Section):
    dir: FilePath = Field(Path("backup"), description="the local backup directory")
    max_copies: int = Field(5, ge=1, le=10_000, description="maximum number of backup sets kept")
    set_period_s: float = Field(300.0, ge=1, le=WEEK_S, description="a new backup set is started after this")


class CheckSection(_Section):
    interval_s: float = Field(60.0, ge=0.1, le=DAY_S, description="sync check period")
    raise_after: int = Field(1, ge=1, le=10_000, description="out-of-sync verdicts in a row that raise the alarm")
    clear_after: int = Field(1, ge=1, le=10_000, description="in-sync verdicts in a row that clear it")
    takeover_after: int = Field(
        3,
        ge=1,
        le=10_000,
        description="checks the standby must be unreachable before the active raises the alarm itself",
    )


class SecuritySection(_Section):
    token_file: FilePath | None = Field(None, description="the pair's shared secret, one line")
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    tls_ca: FilePath | None = None


class NotifySection(_Section):
    kind: Literal["alertmanager", "webhook", "syslog"]
    url: str

    @field_validator("url")
    @classmethod
    def _receiver_url(cls, v: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind is not None:
            try:
                check_notify_url(kind, v)
            except ValueError as exc:
                raise ValueError(f"{mask_url(v)}: {one_line(exc, url_secrets(v))}") from None
        return v


class AlarmsSection(_Section):
    store: str = Field("sqlite", description='"sqlite" or a postgresql:// URL')
    notify: tuple[NotifySection, ...] = Field((), strict=False)
    resend_s: float = Field(60.0, ge=1, le=DAY_S, description="Alertmanager: re-send firing alerts this often")
    resolved_retention_s: float = Field(
        900.0, ge=0, le=WEEK_S, description="Alertmanager: keep re-sending a resolved alert"
    )

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        check_store(v)
        return v


class ConsoleUser(_Section):
    name: str
    role: Literal["admin", "viewer"]
    password_hash: str


class ConsoleSection(_Section):
    users: tuple[ConsoleUser, ...] = Field((), strict=False)


class DiagnoseSection(_Section):
    on_raise: bool = Field(True, description="diagnose automatically when the alarm is raised")
    auto_fix: bool = Field(False, description="let that automatic diagnosis apply the safe fixes")
    window_s: float = Field(600.0, ge=1, le=WEEK_S, description="ha_log step: seconds before and after the alarm")
    min_free_bytes: int = Field(
        16 << 20, ge=0, le=1024 * TiB, description="storage step: less free space than this is a fault"
    )


class AuditSection(_Section):
    """The background audit (hasync.audit): every file read again and compared with what the node believes."""

    enabled: bool = Field(True, description="run the background audit")
    rate_mb_s: float = Field(10.0, gt=0, le=10_000, description="MB read per second by the audit, at most")
    interval_s: float = Field(
        14_400.0, ge=1, le=30 * 86_400, description="a pass starts this long after the previous one started"
    )


class LogSection(_Section):
    max_bytes: int = Field(20 << 20, ge=4096, le=TiB, description="rotate ha.log past this size")
    backup_count: int = Field(10, ge=0, le=10_000, description="rotated files kept")
    level: Literal["DEBUG", "INFO", "WARN", "ERROR"] = "INFO"


class LimitsSection(_Section):
    """What one client may hold of the agent (docs/security.md): time, connections, bytes, log lines."""

    head_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="a new connection must send a whole request head within this",
    )
    idle_timeout_s: float = Field(
        60.0,
        ge=20,
        le=86400,
        allow_inf_nan=False,
        description="close a kept-alive connection idle this long (at least 20: the agents' client keeps one 15 s)",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, le=3600, allow_inf_nan=False, description="a request body must arrive within this"
    )
    max_connections: int = Field(
        256, ge=8, le=65536, description="open connections to the agent; lowered to fit the open-file limit"
    )
    max_body_bytes: int = Field(64 << 20, ge=64 << 10, le=1 << 30, description="largest request body accepted")
    max_response_bytes: int = Field(
        64 << 20, ge=1 << 20, le=4 << 30, description="largest answer read whole from an agent (not file streams)"
    )
    log_rate_s: float = Field(
        60.0, gt=0, le=86400, allow_inf_nan=False, description="repeated warnings per client: one summary per this"
    )


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
    limits: LimitsSection = LimitsSection()
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

    def masker(self) -> Masker:
        """Masks the token, every URL password and every secret-key value of this config."""
        return Masker([self.token, *secrets_in(self.model_dump(mode="json"))])

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


MAX_TOKEN_BYTES = 4096


def _read_token(path: Path, where: str) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise ConfigError(f"{where}: {path} is larger than {MAX_TOKEN_BYTES} bytes, expected one line")
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"{where}: {path} is empty")
    if not token.isascii() or not token.isprintable():
        raise ConfigError(f"{where}: {path} must hold one line of printable ASCII")
    return token


def _dir_problem(path: Path, writable: bool = False) -> str | None:
    """Why `path` is not (and cannot become) a directory, or one this process can write in; None when fine."""
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{path} is not a directory" if probe == path else f"cannot create {path}: {probe} is not a directory"
    if writable and not os.access(probe, os.W_OK | os.X_OK):
        return f"{path} is not writable" if probe == path else f"cannot create {path}: {probe} is not writable"
    return None


def ensure_dirs(cfg: Config) -> None:
    """Check that the node's state and log dirs can be written, and create them: what a writer (the agent,
    a standalone check) does first. ConfigError naming the key."""
    for key, path in (("node.state_dir", cfg.node.state_dir), ("node.log_dir", cfg.node.log_dir)):
        problem = _dir_problem(path, writable=True)
        if problem:
            raise ConfigError(f"{cfg.path}: {key}: {problem}")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{cfg.path}: {key}: cannot create {path}: {exc.strerror}") from None


def _check_nesting(cfg_path: Path, node: NodeSection, dirs: tuple[SyncDir, ...], backup_dir: Path) -> None:
    """ConfigError when a directory of hasync (state, log, backup) is inside a sync dir, or a sync dir inside
    another: the standby would take its own files for drift (or sync a dir twice) and fail for good.
    Compared as resolved absolute paths (symbolic links followed as far as they exist)."""
    real = [(d, d.path.resolve()) for d in dirs]
    own = (("node.state_dir", node.state_dir), ("node.log_dir", node.log_dir), ("backup.dir", backup_dir))
    for key, path in own:
        for d, root in real:
            if path.resolve().is_relative_to(root):
                raise ConfigError(f"{cfg_path}: {key}: {path} is inside sync dir {d.name!r} ({d.path})")
    for i, (d, root) in enumerate(real):
        for other, other_root in real:
            if other is not d and root.is_relative_to(other_root):
                raise ConfigError(
                    f"{cfg_path}: sync.dirs[{i}].path: {d.path} is inside sync dir {other.name!r} ({other.path})"
                )


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
    keys: set[str] = set()
    for i, n in enumerate(cfg.alarms.notify):
        key = notifier_key(n.kind, n.url)
        if key in keys:
            raise ConfigError(f"{cfg_path}: alarms.notify[{i}].url: {key} is configured twice")
        keys.add(key)
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
    if (cfg.role.mode == "static" or cfg.role.active is not None) and cfg.role.active not in (
        cfg.node.name,
        cfg.peer.name,
    ):
        raise ConfigError(
            f"{cfg_path}: role.active: must name this node ({cfg.node.name!r}) or the peer ({cfg.peer.name!r})"
        )
    if cfg.node.name == cfg.peer.name:
        raise ConfigError(f"{cfg_path}: peer.name: must differ from node.name")
    for key, where in (("node.state_dir", node.state_dir), ("node.log_dir", node.log_dir), ("backup.dir", backup.dir)):
        problem = _dir_problem(where)
        if problem:
            raise ConfigError(f"{cfg_path}: {key}: {problem}")
    _check_nesting(cfg_path, node, dirs, backup.dir)
    if sec.token_file is None:
        raise ConfigError(f"{cfg_path}: security.token_file: missing required key")
    token = _read_token(sec.token_file, f"{cfg_path}: security.token_file")
    if sec.tls_cert or sec.tls_key or sec.tls_ca:
        raise ConfigError(f"{cfg_path}: security.tls_cert: TLS is not supported yet, use token_file")
    return cfg.model_copy(
        update={"node": node, "sync": sync, "backup": backup, "security": sec, "path": cfg_path, "token": token}
    )

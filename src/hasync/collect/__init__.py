"""The fault-information bundle (SPEC §9): both nodes' logs, alarms, status and masked configs around an instant.

How a bundle is made (``hasync collect``):

1. The window is [t - before, t + after] on this node's clock; t is ``--at`` or the raise
   time of ``--alarm``.
2. The peer's clock offset is measured NTP-style (`measure_offset`) and the peer cuts its
   logs in the window shifted by that offset, so both halves cover the same real instants.
3. Each node's HA log entries in its window are cut by `hasync.logcut` and spooled, masked,
   to an anonymous temp file: the peer's arrive as a frame stream (the ``L_*`` frames of
   `hasync.peer.protocol`), never a whole file in memory on either side.
4. The size guard (`max_bytes`) drops each node's oldest entries, sharing the room fairly.
5. The ``.tar.gz`` is written through `fsutil.atomic_file` (a temp name in the target
   directory, flushed and renamed): ``<node>/ha.log``, ``<node>/alarms.json``,
   ``<node>/status.json``, ``<node>/config.toml`` for each node, then ``manifest.json`` with every file's size and
   SHA-256, the window, the nodes, the clock offset and notes.

Secrets never enter the bundle: `Masker` replaces the pair token, the config's passwords,
passwords in URLs and values of password/secret/token keys, in log lines as in documents;
configs are re-emitted from their parsed values (comments, which may hold anything, are
dropped) and files a config only points to (token file, TLS key) are never read.

The modules, in the order of the pipeline: `window` (the window and the command line's
values), `offset` (the peer's clock), `spool` (a cut log on disk, the size guard), `configs`
(masked configs), `local` and `peer` (each node's `part`), `alarm` (``--alarm``), `bundle`
(gathering and writing).
"""

from hasync.collect.alarm import find_alarm
from hasync.collect.bundle import DEFAULT_MAX_BYTES, FORMAT_VERSION, Bundle, collect, default_name, target_path
from hasync.collect.configs import masked_config
from hasync.collect.offset import ClockOffset, measure_offset
from hasync.collect.part import NodePart, ProgressFn
from hasync.collect.peer import fetch_peer_logs, peer_part, stream_peer_log
from hasync.collect.spool import LogSpool, Trim, cut_json, render, share
from hasync.collect.window import Window, parse_duration, parse_size, parse_time

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "Bundle",
    "ClockOffset",
    "LogSpool",
    "NodePart",
    "ProgressFn",
    "Trim",
    "Window",
    "collect",
    "cut_json",
    "default_name",
    "fetch_peer_logs",
    "find_alarm",
    "masked_config",
    "measure_offset",
    "parse_duration",
    "parse_size",
    "parse_time",
    "peer_part",
    "render",
    "share",
    "stream_peer_log",
    "target_path",
]

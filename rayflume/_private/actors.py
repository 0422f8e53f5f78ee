"""The Ray actors behind every component.

Each component runs in its own named, detached actor created with ``max_restarts`` (supervised
restarts): Ray re-runs ``__init__`` with the same arguments after the process dies, so every
actor rebuilds itself from its config there. Actors are threaded (``max_concurrency``): the
component's loop runs in a background thread while metrics, status and stop calls are served.

* ``ChannelActor`` fronts a :class:`~rayflume.channels.base.Channel`; it expires overdue leases.
* ``SourceActor`` runs a :class:`~rayflume._private.runners.SourceRunner`.
* ``SinkGroupActor`` runs a sink processor over one or more
  :class:`~rayflume._private.runners.SinkRunner`; on start it releases leases its previous
  incarnation held, so a restarted sink's batches return to the channel at once, and reads which
  of its sinks an operator paused before any of them takes (:mod:`rayflume._private.pausing`).

This module is where the rest of rayflume imports them from; each part is in a module that says
what it guarantees:

* :mod:`~rayflume._private.actor_base`: what every actor shares (the namespace and actor names,
  :func:`actor_options`, the typed config, process memory, the ``_Component`` base and
  :func:`start_with_retries`);
* :mod:`~rayflume._private.channel_ports`: how sources and sink groups reach their channel actors
  (``ChannelDirectory``, ``_ChannelHandlePort``);
* :mod:`~rayflume._private.channel_actor`, :mod:`~rayflume._private.source_actor`,
  :mod:`~rayflume._private.sink_group_actor`: one actor kind each, with its Ray actor class
  (``RemoteChannel``, ``RemoteSource``, ``RemoteSinkGroup``).
"""
from __future__ import annotations

from rayflume._private.actor_base import EXPORT_EVERY_S as EXPORT_EVERY_S
from rayflume._private.actor_base import NAMESPACE as NAMESPACE
from rayflume._private.actor_base import START_RETRY_MAX_S as START_RETRY_MAX_S
from rayflume._private.actor_base import TAP_MAX_WAIT_S as TAP_MAX_WAIT_S
from rayflume._private.actor_base import _Component as _Component
from rayflume._private.actor_base import _typed as _typed
from rayflume._private.actor_base import actor_name as actor_name
from rayflume._private.actor_base import actor_options as actor_options
from rayflume._private.actor_base import channel_actor_name as channel_actor_name
from rayflume._private.actor_base import keep_pandas_out_of_pyarrow as keep_pandas_out_of_pyarrow
from rayflume._private.actor_base import ledger_key as ledger_key
from rayflume._private.actor_base import process_memory as process_memory
from rayflume._private.actor_base import start_with_retries as start_with_retries
from rayflume._private.actor_base import was_reconstructed as was_reconstructed
from rayflume._private.channel_actor import HOUSEKEEPING_S as HOUSEKEEPING_S
from rayflume._private.channel_actor import ChannelActor as ChannelActor
from rayflume._private.channel_actor import RemoteChannel as RemoteChannel
from rayflume._private.channel_ports import ChannelDirectory as ChannelDirectory
from rayflume._private.channel_ports import _ChannelHandlePort as _ChannelHandlePort
from rayflume._private.sink_group_actor import PAUSE_SETTLE_POLL_S as PAUSE_SETTLE_POLL_S
from rayflume._private.sink_group_actor import PAUSE_SETTLE_WAIT_S as PAUSE_SETTLE_WAIT_S
from rayflume._private.sink_group_actor import RemoteSinkGroup as RemoteSinkGroup
from rayflume._private.sink_group_actor import SinkGroupActor as SinkGroupActor
from rayflume._private.source_actor import HOP_START_WAIT_S as HOP_START_WAIT_S
from rayflume._private.source_actor import RemoteSource as RemoteSource
from rayflume._private.source_actor import SourceActor as SourceActor

"""How each Flume component type's properties become rayflume keys: the one table.

One :class:`ComponentMapping` per Flume component type, holding a :class:`Prop` per documented
Flume property: the rayflume key it becomes and how its value is converted (milliseconds to
seconds, a space-separated list to a list, Flume's enum spellings to rayflume's), or, when there is
no equivalent, why and what to do instead. :mod:`rayflume.flume_conf.convert` applies the table;
:mod:`rayflume.flume_conf.docs` prints it. Keys are relative to the component
(``a1.sinks.k1.hdfs.rollInterval`` -> ``hdfs.rollInterval``); a ``*`` in a Flume key matches one
name (the last ``*`` matches the rest of the key, dots included) and fills the matching ``*`` of
the rayflume key, where each ``.`` opens a nested mapping.

Which rayflume type a Flume alias or class name stands for is the registry's
(:data:`rayflume.registry.FLUME_TYPES`); this table only says how the properties map.

Structural properties are read by the converter itself and are not in the table: a component's
``type``, a source's ``channels``, ``selector.*`` and ``interceptors``, a sink's ``channel``, a
sink group's ``sinks`` and ``processor.*``.
"""
from __future__ import annotations

import ipaddress
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

from rayflume import registry


class Unusable(Exception):
    """The property's value cannot be carried over and the topology would not do what the Flume
    agent did; the message says what to do (an error)."""


@dataclass(frozen=True)
class Conversion:
    """How a Flume value (a string) becomes a rayflume value. ``doc`` says it in the docs."""

    doc: str
    fn: Callable[[str, Any], Any]  # (value, the rayflume field's annotation or None) -> value

    def __call__(self, value: str, annotation=None):
        return self.fn(value, annotation)


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _number(value: str) -> float | int:
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None


def _tokens(value: str) -> list[str]:
    return [t for t in re.split(r"[\s,]+", value.strip()) if t]


def _auto(value: str, annotation) -> Any:
    """``value`` as the type the rayflume field declares (a string when unknown)."""
    args = set(typing.get_args(annotation)) or {annotation}
    origins = {typing.get_origin(a) or a for a in args} - {type(None)}
    if str in origins or not origins:
        return value
    if origins == {bool}:
        return _bool(value)
    if int in origins and float not in origins:
        number = _number(value)
        if isinstance(number, float) and not number.is_integer():
            raise ValueError(f"expected a whole number, got {value!r}")
        return int(number)
    if float in origins:
        return _number(value)
    if list in origins:
        return _tokens(value)
    return value


AUTO = Conversion("", _auto)
AS_IS = Conversion("", lambda v, a: v)
MS = Conversion("milliseconds / 1000", lambda v, a: _number(v) / 1000)
SECONDS = Conversion("seconds", lambda v, a: _number(v))
LIST = Conversion("space-separated names -> list", lambda v, a: v.split())
COMMA_LIST = Conversion("comma-separated -> list", lambda v, a: [t.strip() for t in v.split(",") if t.strip()])
INT = Conversion("", lambda v, a: int(_number(v)))


def enum(values: dict[str, Any], otherwise: str) -> Conversion:
    """Flume's spellings (any case) -> rayflume's; any other value is :class:`Unusable` with
    ``otherwise`` as what to do."""
    lowered = {k.lower(): v for k, v in values.items()}

    def convert(value: str, annotation):
        key = value.strip().lower()
        if key not in lowered:
            raise Unusable(f"{value!r} has no rayflume equivalent; {otherwise}")
        return lowered[key]

    shown = ", ".join(f"{k} -> {v}" for k, v in values.items())
    return Conversion(shown, convert)


@dataclass(frozen=True)
class Prop:
    """One Flume property. ``key`` None: it has no equivalent; ``why`` says why and what to do,
    and ``error`` makes using it an error (the topology would not do what the agent did) rather
    than a warning; but a ``key`` None with a conversion other than AUTO is a property whose
    accepted values need no key (Flume's default behaviour is rayflume's), checked by the
    conversion. With a key, ``why`` is an optional note for the docs."""

    flume: str
    key: str | None
    conv: Conversion = AUTO
    why: str = ""
    error: bool = False
    doc: str = ""  # the key's meaning when its component config is not available to describe it

    def match(self, name: str) -> list[str] | None:
        """The ``*`` captures if this property's Flume key matches ``name``, else None."""
        if "*" not in self.flume:
            return [] if name == self.flume else None
        parts = [re.escape(p) for p in self.flume.split("*")]
        pattern = "".join(p + ("([^.]+)" if i < len(parts) - 2 else "(.+)") for i, p in enumerate(parts[:-1]))
        m = re.fullmatch(pattern + parts[-1], name)
        return list(m.groups()) if m else None


@dataclass(frozen=True)
class ComponentMapping:
    """The properties of one Flume component type and what they become in rayflume.

    Flume types with no rayflume equivalent are in :data:`UNSUPPORTED` instead.
    ``flume_defaults`` are ``(key, value, why)`` set when the Flume
    file does not set the key, where Flume's default differs from rayflume's in a way that changes
    what the agent does. ``finish`` reshapes what the properties gave (``(mapping, warn)`` ->
    None; ``warn(message)`` reports a problem, raising :class:`Unusable` is an error)."""

    kind: str
    flume: str
    rayflume_type: str
    props: tuple[Prop, ...] = ()
    flume_defaults: tuple[tuple[str, Any, str], ...] = ()
    finish: Callable[[dict, Callable[[str], None]], None] | None = None
    scratch: tuple[str, ...] = ()  # keys the properties fill for ``finish`` only, not rayflume keys

    @property
    def implied(self) -> dict:
        """Keys the Flume type implies in rayflume (the registry's: ``protocol: udp`` for netcatudp)."""
        flume = registry.flume_type(self.kind, self.flume)
        return dict(flume.implied) if flume is not None else {}

    def find(self, name: str) -> tuple[Prop, list[str]] | None:
        """The table's entry for property ``name`` (exact keys before patterns), with its captures."""
        for prop in sorted(self.props, key=lambda p: ("*" in p.flume, -len(p.flume))):
            captures = prop.match(name)
            if captures is not None:
                return prop, captures
        return None


def no(flume: str, why: str, error: bool = False) -> Prop:
    """A Flume property with no rayflume equivalent."""
    return Prop(flume, None, why=why, error=error)


# -- shared pieces ---------------------------------------------------------------------------------
PEM_KEYSTORE = ("rayflume reads PEM files, not Java keystores: convert the keystore to PEM (keytool -importkeystore "
                "-deststoretype PKCS12, then openssl pkcs12 -nodes) and set ssl_certfile/ssl_keyfile")
PEM_TRUSTSTORE = ("rayflume reads PEM files, not Java truststores: export the CA certificates to PEM (keytool "
                  "-exportcert -rfc) and set ssl_ca_file")
JAVA_TLS_TUNING = ("rayflume uses Python's TLS defaults (TLS 1.2 or later, the system's cipher policy); there is "
                   "no per-component protocol or cipher list: remove it")
KERBEROS_RPC = ("no equivalent yet: the thrift source and sink speak Thrift without SASL/Kerberos; protect the hop "
                "with TLS (ssl, ssl_client_ca_file for client certificates) instead")
KEEP_ALIVE = ("a put into a full rayflume channel fails at once and the source retries (backpressure) rather than "
              "waiting keep-alive seconds; remove it")
BYTE_BUFFER = ("rayflume's byte_capacity counts the events' Arrow buffers with no headroom percentage; size "
               "byte_capacity for it")
JAVA_KAFKA_CLIENT = {
    "key.serializer": "rayflume's Kafka client (librdkafka) sends bytes; remove it",
    "value.serializer": "rayflume's Kafka client (librdkafka) sends bytes; remove it",
    "key.deserializer": "rayflume's Kafka client (librdkafka) reads bytes; remove it",
    "value.deserializer": "rayflume's Kafka client (librdkafka) reads bytes; remove it",
    "ssl.truststore.location": "librdkafka reads PEM: export the truststore's CAs to PEM and set ssl.ca.location",
    "ssl.truststore.password": "librdkafka reads PEM: export the truststore's CAs to PEM and set ssl.ca.location",
    "ssl.truststore.type": "librdkafka reads PEM: export the truststore's CAs to PEM and set ssl.ca.location",
    "ssl.keystore.location": ("librdkafka reads PEM: convert the keystore and set ssl.certificate.location and "
                              "ssl.key.location"),
    "ssl.keystore.password": ("librdkafka reads PEM: convert the keystore and set ssl.certificate.location and "
                              "ssl.key.location"),
    "ssl.keystore.type": ("librdkafka reads PEM: convert the keystore and set ssl.certificate.location and "
                          "ssl.key.location"),
    "ssl.key.password": "librdkafka's equivalent is ssl.key.password of a PEM key; set it with ssl.key.location",
    "sasl.jaas.config": "librdkafka takes no JAAS file: set sasl.username and sasl.password (PLAIN/SCRAM) instead",
    "sasl.kerberos.service.name": "set librdkafka's sasl.kerberos.service.name and sasl.kerberos.keytab instead",
    "partitioner.class": "Java partitioners do not run here; librdkafka's `partitioner` property names a built-in one",
    "interceptor.classes": "Java client interceptors do not run here; remove it",
}


def _kafka_client(value: str, annotation) -> str:
    return value


KAFKA_CLIENT = Conversion("passed through to librdkafka as written", _kafka_client)


def kafka_passthrough(prefix: str, key: str, what: str) -> tuple[Prop, ...]:
    """``kafka.<prefix>.*`` into the component's ``key`` map, with the Java-only client keys reported."""
    props = [Prop(f"kafka.{prefix}.*", f"{key}.*", KAFKA_CLIENT,
                  why=f"Kafka {what} properties, passed to librdkafka, which validates them when the component starts")]
    props += [no(f"kafka.{prefix}.{k}", why) for k, why in JAVA_KAFKA_CLIENT.items()]
    return tuple(props)


def _allowed_clients(rules: str, annotation) -> list[str]:
    """Flume's ``ipFilterRules`` (``allow:ip:10.0.*,deny:ip:*``, first match wins) as rayflume's
    ``allowed_clients`` (networks; anything else is refused). Only IP allow rules map; a final
    ``deny:ip:*`` is what allowed_clients does anyway; any other deny rule, and name rules, are
    reported."""
    allowed, problems = [], []
    entries = [r.strip() for r in rules.split(",") if r.strip()]
    for i, rule in enumerate(entries):
        parts = rule.split(":", 2)
        if len(parts) != 3:
            problems.append(f"{rule!r} is not allow|deny:ip|name:pattern")
            continue
        verdict, by, pattern = (p.strip() for p in parts)
        if verdict == "deny":
            if pattern == "*" and i == len(entries) - 1:
                continue
            problems.append(f"deny rule {rule!r} has no equivalent (allowed_clients only allows)")
            continue
        if by != "ip":
            problems.append(f"{rule!r} matches host names; allowed_clients takes IP addresses or CIDR blocks")
            continue
        if pattern == "*":
            return []  # any client
        octets = pattern.split(".")
        fixed = octets[:-1] if octets[-1] == "*" else octets
        if "*" in pattern and "*" not in fixed and len(fixed) < 4:
            # Flume's `10.0.*` matches every address that starts with 10.0.
            network = ".".join(fixed + ["0"] * (4 - len(fixed))) + f"/{8 * len(fixed)}"
        else:
            network = pattern
        try:
            allowed.append(str(ipaddress.ip_network(network, strict=False)))
        except ValueError:
            problems.append(f"{rule!r}: {pattern!r} is neither an address nor a trailing-* pattern")
    if problems:
        raise Unusable("; ".join(problems) + ". Write the allowed addresses as CIDR blocks in allowed_clients")
    return allowed


ALLOWED_CLIENTS = Conversion("allow:ip:A.B.* rules -> CIDR blocks (A.B.0.0/16); deny rules reported",
                             _allowed_clients)


def _avro_ip_filter(mapping: dict, warn) -> None:
    enabled = mapping.pop("ip_filter", False)
    if not enabled and "allowed_clients" in mapping:
        mapping.pop("allowed_clients")
        warn("ipFilterRules: not applied because ipFilter is not true (as in Flume); set ipFilter = true to "
             "restrict clients")


def _taildir_filegroups(mapping: dict, warn) -> None:
    """Flume reads only the groups named in ``filegroups``; each must have a path."""
    names = mapping.pop("filegroup_names", None)
    groups = mapping.get("filegroups", {})
    if names is None:
        raise Unusable("filegroups: the list of file group names is missing (filegroups = f1 f2)")
    missing = [n for n in names if n not in groups]
    if missing:
        raise Unusable(f"filegroups.{missing[0]}: listed in filegroups but has no path; add "
                       f"filegroups.{missing[0]} = /dir/regex")
    for name in [n for n in groups if n not in names]:
        warn(f"filegroups.{name}: not in the filegroups list, so Flume ignores it; not converted")
        groups.pop(name)
    for name in [n for n in mapping.get("headers", {}) if n not in names]:
        warn(f"headers.{name}.*: file group {name} is not in the filegroups list; not converted")
        mapping["headers"].pop(name)


def _kafka_acks(mapping: dict, warn) -> None:
    """Flume's Java producer with ``acks`` other than all is not idempotent; librdkafka's is unless
    told otherwise, and refuses such acks: keep Flume's behaviour and say what it costs."""
    producer = mapping.get("producer") or {}
    acks = str(producer.get("acks", "all")).strip().lower()
    if acks not in ("all", "-1") and "enable.idempotence" not in producer:
        producer["enable.idempotence"] = "false"
        warn(f"kafka.producer.acks = {acks}: kept, with producer.enable.idempotence: false (as Flume's producer); "
             f"acks other than all can lose acknowledged events: set kafka.producer.acks = all to avoid it")


# -- sources ---------------------------------------------------------------------------------------
NETWORK_TLS = (
    Prop("ssl", "ssl"),
    no("keystore", PEM_KEYSTORE), no("keystore-password", PEM_KEYSTORE), no("keystore-type", PEM_KEYSTORE),
    no("exclude-protocols", JAVA_TLS_TUNING), no("include-protocols", JAVA_TLS_TUNING),
    no("exclude-cipher-suites", JAVA_TLS_TUNING), no("include-cipher-suites", JAVA_TLS_TUNING),
)

SOURCES = (
    ComponentMapping("source", "avro", "avro", (
        Prop("bind", "bind", AS_IS, doc="Address to listen on."),
        Prop("port", "port", INT, doc="Port to listen on."),
        no("threads", "connections are served by a shared server core, bounded by max_connections; remove it"),
        Prop("compression-type", "compression_type", enum({"none": "none", "deflate": "deflate"},
                                                          "use none or deflate"),
             doc="none or deflate; must match the sender."),
        Prop("compression-level", "compression_level", INT, doc="deflate level 1-9."),
        Prop("ipFilter", "ip_filter", Conversion("true: apply ipFilterRules", lambda v, a: _bool(v)),
             why="only decides whether ipFilterRules apply"),
        Prop("ipFilterRules", "allowed_clients", ALLOWED_CLIENTS,
             doc="IP addresses or CIDR blocks allowed to connect; empty: any."),
        Prop("batchSize", "batch_size", INT, doc="Most events put into the channel in one transaction."),
        *NETWORK_TLS,
    ), finish=_avro_ip_filter, scratch=("ip_filter",)),
    ComponentMapping("source", "thrift", "thrift", (
        Prop("bind", "bind"), Prop("port", "port"), Prop("protocol", "protocol"),
        no("threads", "connections are served by a shared server core, bounded by max_connections; remove it"),
        *NETWORK_TLS,
        no("kerberos", KERBEROS_RPC, error=True), no("agent-principal", KERBEROS_RPC),
        no("agent-keytab", KERBEROS_RPC),
    )),
    ComponentMapping("source", "exec", "exec", (
        Prop("command", "command"), Prop("shell", "shell"), Prop("restart", "restart"),
        Prop("restartThrottle", "restart_throttle_s", MS), Prop("logStdErr", "log_std_err"),
        Prop("batchSize", "batch_size"), Prop("batchTimeout", "batch_timeout_s", MS),
        no("charset", "the exec source reads the command's output as UTF-8; convert in the command (e.g. | iconv "
                      "-f LATIN1 -t UTF-8)"),
    )),
    ComponentMapping("source", "spooldir", "spooldir", (
        Prop("spoolDir", "spool_dir"), Prop("fileSuffix", "file_suffix"),
        Prop("deletePolicy", "delete_policy", enum({"never": "never", "immediate": "immediate"},
                                                   "use never or immediate")),
        Prop("trackingPolicy", "tracking_policy", enum({"rename": "rename", "tracker_dir": "tracker_dir"},
                                                       "use rename or tracker_dir")),
        Prop("trackerDir", "tracker_dir"), Prop("includePattern", "include_pattern"),
        Prop("ignorePattern", "ignore_pattern"),
        Prop("consumeOrder", "consume_order", enum({"oldest": "oldest", "youngest": "youngest", "random": "random"},
                                                   "use oldest, youngest or random")),
        Prop("pollDelay", "poll_delay_s", MS), Prop("recursiveDirectorySearch", "recursive_directory_search"),
        no("maxBackoff", "rayflume retries a full channel with its own backoff; poll_delay_s sets the idle listing "
                         "interval; remove it"),
        Prop("batchSize", "batch_size"), Prop("inputCharset", "input_charset"),
        Prop("decodeErrorPolicy", "decode_error_policy", enum({"FAIL": "FAIL", "REPLACE": "REPLACE",
                                                               "IGNORE": "IGNORE"}, "use FAIL, REPLACE or IGNORE")),
        Prop("deserializer", None, enum({"LINE": None, "org.apache.flume.serialization.LineDeserializer$Builder": None},
                                        "rayflume's spooling directory source reads lines only (Flume's LINE); "
                                        "convert the files to lines first"),
             why="LINE is what rayflume does; any other deserializer (AVRO, BlobDeserializer) is an error"),
        Prop("deserializer.maxLineLength", "max_line_length_bytes"),
        no("deserializer.outputCharset", "bodies are always UTF-8; remove it"),
        Prop("fileHeader", "file_header"), Prop("fileHeaderKey", "file_header_key"),
        Prop("basenameHeader", "basename_header"), Prop("basenameHeaderKey", "basename_header_key"),
    )),
    ComponentMapping("source", "TAILDIR", "taildir", (
        Prop("filegroups", "filegroup_names", LIST, why="the names of the groups; each filegroups.<name> becomes "
                                                        "one entry of filegroups"),
        Prop("filegroups.*", "filegroups.*", AS_IS),
        Prop("headers.*.*", "headers.*.*", AS_IS),
        Prop("positionFile", "position_file"), Prop("byteOffsetHeader", "byte_offset_header"),
        Prop("skipToEnd", "skip_to_end"), Prop("idleTimeout", "idle_timeout_s", MS),
        Prop("writePosInterval", "write_pos_interval_s", MS), Prop("batchSize", "batch_size"),
        no("maxBatchCount", "rayflume reads the files in turn, one batch each, so no file starves the others; "
                            "remove it"),
        no("backoffSleepIncrement", "rayflume is told of new data by the file system and polls idle files itself; "
                                    "remove it"),
        no("maxBackoffSleep", "rayflume is told of new data by the file system and polls idle files itself; "
                              "remove it"),
        no("cachePatternMatching", "directory listings are always matched against the cached patterns; remove it"),
        Prop("fileHeader", "file_header"), Prop("fileHeaderKey", "file_header_key"),
    ), finish=_taildir_filegroups, scratch=("filegroup_names",)),
    ComponentMapping("source", "netcat", "netcat", (
        Prop("bind", "bind"), Prop("port", "port"),
        Prop("max-line-length", "max_line_length_bytes"), Prop("ack-every-event", "ack_every_event"),
    )),
    ComponentMapping("source", "netcatudp", "netcat", (
        Prop("bind", "bind"), Prop("port", "port"), Prop("remoteAddressHeader", "remote_address_header"),
    )),
    ComponentMapping("source", "seq", "sequence", (
        Prop("batchSize", "batch_size"), Prop("totalEvents", "total_events"),
    )),
    ComponentMapping("source", "syslogtcp", "syslog_tcp", (
        Prop("host", "bind", why="Flume's host is the address to listen on"), Prop("port", "port"),
        Prop("eventSize", "max_event_size_bytes"), Prop("keepFields", "keep_fields", AS_IS),
        Prop("clientIPHeader", "client_ip_header"), Prop("clientHostnameHeader", "client_hostname_header"),
        *NETWORK_TLS,
    )),
    ComponentMapping("source", "syslogudp", "syslog_udp", (
        Prop("host", "bind", why="Flume's host is the address to listen on"), Prop("port", "port"),
        Prop("keepFields", "keep_fields", AS_IS),
        Prop("clientIPHeader", "client_ip_header"), Prop("clientHostnameHeader", "client_hostname_header"),
    )),
    ComponentMapping("source", "http", "http", (
        Prop("bind", "bind"), Prop("port", "port"),
        Prop("handler", "handler", enum({"org.apache.flume.source.http.JSONHandler": "json",
                                         "org.apache.flume.sink.solr.morphline.BlobHandler": "blob",
                                         "JSONHandler": "json", "BlobHandler": "blob"},
                                        "rayflume's http source has the json and blob handlers; a Java handler "
                                        "does not run here")),
        no("handler.*", "the json and blob handlers take no handler properties; remove it"),
        Prop("enableSSL", "ssl", why="Flume's deprecated name of ssl"),
        *NETWORK_TLS,
        no("QueuedThreadPool.*", "rayflume's http source is asynchronous: no thread pool to size; limit "
                                 "max_connections instead"),
        no("HttpConfiguration.*", "Jetty settings have no equivalent; see the http source's own keys "
                                  "(max_request_bytes, request_timeout_s)"),
        no("SslContextFactory.*", JAVA_TLS_TUNING),
        no("ServerConnector.*", "Jetty settings have no equivalent; see max_connections and idle_timeout_s"),
    ), flume_defaults=(("bind", "0.0.0.0", "Flume's http source listens on every interface by default; "
                                           "rayflume's on 127.0.0.1"),)),
    ComponentMapping("source", "org.apache.flume.source.kafka.KafkaSource", "kafka", (
        Prop("kafka.bootstrap.servers", "bootstrap_servers"),
        Prop("kafka.topics", "topics", COMMA_LIST),
        Prop("kafka.topics.regex", "topics_regex"),
        Prop("kafka.consumer.group.id", "group_id"),
        Prop("kafka.consumer.auto.offset.reset", "auto_offset_reset"),
        Prop("batchSize", "batch_size"), Prop("batchDurationMillis", "batch_duration_s", MS),
        no("backoffSleepIncrement", "rayflume backs off an empty or failing poll by itself; remove it"),
        no("maxBackoffSleep", "rayflume backs off an empty or failing poll by itself; remove it"),
        Prop("useFlumeEventFormat", "parse_as_flume_event"),
        Prop("setTopicHeader", "set_topic_header"), Prop("topicHeader", "topic_header"),
        no("migrateZookeeperOffsets", "offsets are in Kafka since Flume 1.7; remove it"),
        no("zookeeperConnect", "deprecated in Flume; use kafka.bootstrap.servers"),
        Prop("topic", "topics", COMMA_LIST, why="Flume's deprecated name of kafka.topics"),
        Prop("groupId", "group_id", why="Flume's deprecated name of kafka.consumer.group.id"),
        *kafka_passthrough("consumer", "consumer", "consumer"),
    )),
)

UNSUPPORTED = {
    "source": {
        "jms": "there is no JMS source: bridge the queue to Kafka and use the kafka source",
        "org.apache.flume.source.jms.JMSSource": "there is no JMS source: bridge the queue to Kafka and use the "
                                                 "kafka source",
        "multiport_syslogtcp": "define one syslog_tcp source per port instead (each with the same channels)",
        "org.apache.flume.source.MultiportSyslogTCPSource": "define one syslog_tcp source per port instead",
        "org.apache.flume.source.scribe.ScribeSource": "there is no Scribe source; use the http or avro source",
        "org.apache.flume.source.twitter.TwitterSource": "there is no Twitter source",
        "org.apache.flume.source.StressSource": "use the sequence source (seq) to generate events",
        "org.apache.flume.source.avroLegacy.AvroLegacySource": "Flume 0.9 sources are not supported",
        "org.apache.flume.source.thriftLegacy.ThriftLegacySource": "Flume 0.9 sources are not supported",
    },
    "channel": {
        "jdbc": "there is no JDBC channel: use the file channel for a durable channel",
        "org.apache.flume.channel.jdbc.JdbcChannel": "there is no JDBC channel: use the file channel",
        "org.apache.flume.channel.PseudoTxnMemoryChannel": "use the memory channel",
    },
    "sink": {
        "hbase": "there is no HBase sink: write to Kafka or HDFS and load from there",
        "hbase2": "there is no HBase sink: write to Kafka or HDFS and load from there",
        "asynchbase": "there is no HBase sink: write to Kafka or HDFS and load from there",
        "org.apache.flume.sink.hbase.HBaseSink": "there is no HBase sink",
        "org.apache.flume.sink.hbase.AsyncHBaseSink": "there is no HBase sink",
        "org.apache.flume.sink.hbase2.HBase2Sink": "there is no HBase sink",
        "hive": "there is no Hive sink: write files with the hdfs sink (serializer parquet) under the table's "
                "location",
        "org.apache.flume.sink.hive.HiveSink": "there is no Hive sink: write files with the hdfs sink",
        "elasticsearch": "there is no Elasticsearch sink: use the http sink against the _bulk API, or Kafka",
        "org.apache.flume.sink.elasticsearch.ElasticSearchSink": "there is no Elasticsearch sink",
        "irc": "there is no IRC sink",
        "morphline_solr": "there is no Solr sink",
        "org.apache.flume.sink.solr.morphline.MorphlineSolrSink": "there is no Solr sink",
        "org.apache.flume.sink.kite.DatasetSink": "there is no Kite dataset sink: use the hdfs sink",
        "org.apache.kudu.flume.sink.KuduSink": "there is no Kudu sink",
    },
    "interceptor": {
        "org.apache.flume.sink.solr.morphline.MorphlineInterceptor$Builder": (
            "morphlines do not run here: write the transformation as a Python interceptor (type: "
            "'package.module:callable')"),
    },
    "selector": {
        "load_balancing": ("there is no load-balancing channel selector: give the source one channel and drain it "
                           "with a load_balance sink group"),
        "org.apache.flume.channel.LoadBalancingChannelSelector": "there is no load-balancing channel selector",
    },
    "processor": {},
}

# -- channels --------------------------------------------------------------------------------------
FILE_CHANNEL = (
    Prop("checkpointDir", "checkpoint_dir"), Prop("dataDirs", "data_dirs", COMMA_LIST),
    Prop("transactionCapacity", "transaction_capacity"),
    Prop("checkpointInterval", "checkpoint_interval_s", MS), Prop("maxFileSize", "max_file_size_bytes"),
    Prop("minimumRequiredSpace", "minimum_required_space_bytes"),
    no("keep-alive", KEEP_ALIVE),
    no("useDualCheckpoints", "rayflume writes each checkpoint atomically beside the previous one, so one "
                             "directory is enough; remove it"),
    no("backupCheckpointDir", "rayflume writes each checkpoint atomically; remove it"),
    no("compressBackupCheckpoint", "there is no backup checkpoint; remove it"),
    Prop("checkpointOnClose", "checkpoint_on_close"),
    no("use-fast-replay", "replay always uses the checkpoint and the logs after it; remove it"),
    no("use-log-replay-v1", "replay always uses the checkpoint and the logs after it; remove it"),
    no("encryption.*", "the file channel does not encrypt its logs: use an encrypted file system (LUKS, an "
                       "encrypted volume) for data_dirs", error=True),
    Prop("fsyncPerTransaction", "fsync", enum({"true": "per_commit", "false": "interval"}, "use true or false")),
    Prop("fsyncInterval", "fsync_interval_s", SECONDS),
)


def _fsync_interval_needs_interval(mapping: dict, warn) -> None:
    if "fsync_interval_s" in mapping and mapping.get("fsync") != "interval":
        mapping.pop("fsync_interval_s")
        warn("fsyncInterval: not carried over: it only applies with fsyncPerTransaction = false (as in Flume)")


CHANNELS = (
    ComponentMapping("channel", "memory", "memory", (
        Prop("capacity", "capacity"), Prop("transactionCapacity", "transaction_capacity"),
        no("keep-alive", KEEP_ALIVE),
        Prop("byteCapacity", "byte_capacity",
             why="Flume counts body bytes only; rayflume counts the events' Arrow buffers (bodies and headers)"),
        no("byteCapacityBufferPercentage", BYTE_BUFFER),
    ), flume_defaults=(("capacity", 100, "Flume's memory channel holds 100 events by default; rayflume's 100000"),
                       ("transaction_capacity", 100, "Flume's default transactionCapacity is 100; rayflume's "
                                                     "10000"))),
    ComponentMapping("channel", "file", "file", (Prop("capacity", "capacity"), *FILE_CHANNEL),
                     finish=_fsync_interval_needs_interval),
    ComponentMapping("channel", "SPILLABLEMEMORY", "spillable", (
        Prop("memoryCapacity", "memory_capacity"), Prop("overflowCapacity", "overflow_capacity"),
        no("overflowTimeout", "a put spills to the overflow at once when memory is full; remove it"),
        Prop("byteCapacity", "byte_capacity",
             why="limits the memory part; rayflume counts the events' Arrow buffers"),
        no("byteCapacityBufferPercentage", BYTE_BUFFER),
        no("avgEventSize", "rayflume measures the events' sizes; remove it"),
        no("capacity", "the channel holds memoryCapacity + overflowCapacity events (as in Flume, which refuses "
                       "capacity here); remove it"),
        *FILE_CHANNEL,
    ), finish=_fsync_interval_needs_interval),
    ComponentMapping("channel", "org.apache.flume.channel.kafka.KafkaChannel", "kafka", (
        Prop("kafka.bootstrap.servers", "bootstrap_servers"), Prop("kafka.topic", "topic"),
        Prop("kafka.consumer.group.id", "group_id"),
        Prop("kafka.consumer.auto.offset.reset", "auto_offset_reset"),
        Prop("transactionCapacity", "transaction_capacity"), Prop("capacity", "capacity"),
        Prop("parseAsFlumeEvent", "parse_as_flume_event",
             why="Flume's default (true) also writes Avro-encoded events; rayflume writes its own records unless "
                 "use_flume_event_format is set, and reads both"),
        Prop("pollTimeout", "poll_timeout_s", MS),
        no("defaultPartitionId", "the channel writes to the partitions of its topic itself; remove it"),
        no("partitionIdHeader", "the channel writes to the partitions of its topic itself; remove it"),
        no("migrateZookeeperOffsets", "offsets are in Kafka since Flume 1.7; remove it"),
        no("zookeeperConnect", "deprecated in Flume; use kafka.bootstrap.servers"),
        no("keep-alive", KEEP_ALIVE),
        Prop("brokerList", "bootstrap_servers", why="Flume's deprecated name of kafka.bootstrap.servers"),
        Prop("topic", "topic", why="Flume's deprecated name of kafka.topic"),
        Prop("groupId", "group_id", why="Flume's deprecated name of kafka.consumer.group.id"),
        *kafka_passthrough("producer", "producer", "producer"),
        *kafka_passthrough("consumer", "consumer", "consumer"),
    ), finish=_kafka_acks),
)

# -- sinks -----------------------------------------------------------------------------------------
SERIALIZER_TEXT = {"text": "text", "TEXT": "text", "header_and_text": "header_and_text",
                   "org.apache.flume.serialization.BodyTextEventSerializer$Builder": "text",
                   "org.apache.flume.serialization.HeaderAndBodyTextEventSerializer$Builder": "header_and_text"}


def _hdfs_file_type(mapping: dict, warn) -> None:
    """Flume's fileType decides what its codec does: SequenceFile (the default, which rayflume does
    not write) compresses with it, DataStream ignores it, CompressedStream needs it."""
    compressed = mapping.get("compression", "none") != "none"
    if "file_type" not in mapping:
        if compressed:
            mapping["file_type"] = "compressed_stream"
        warn(f"hdfs.fileType: not set, and Flume's default is SequenceFile, which rayflume does not write; the "
             f"converted sink writes {'compressed' if compressed else 'plain'} files "
             f"({mapping.get('file_type', 'data_stream')}). Set hdfs.fileType to DataStream or CompressedStream to "
             f"say so")
    elif mapping["file_type"] == "compressed_stream" and not compressed:
        raise Unusable("hdfs.fileType: CompressedStream needs hdfs.codeC (gzip or zstd)")
    elif mapping["file_type"] == "data_stream" and compressed:
        codec = mapping.pop("compression")
        warn(f"hdfs.codeC: not carried over: Flume's DataStream ignores the codec ({codec}), so the files stay "
             f"uncompressed; set hdfs.fileType = CompressedStream to compress them")


SINKS = (
    ComponentMapping("sink", "hdfs", "hdfs", (
        Prop("hdfs.path", "path"), Prop("hdfs.filePrefix", "file_prefix"), Prop("hdfs.fileSuffix", "file_suffix"),
        Prop("hdfs.inUsePrefix", "in_use_prefix"), Prop("hdfs.inUseSuffix", "in_use_suffix"),
        no("hdfs.emptyInUseSuffix", "a file being written always carries in_use_suffix; set in_use_suffix to "
                                    "'' for the same effect"),
        Prop("hdfs.rollInterval", "roll_interval_s", SECONDS), Prop("hdfs.rollSize", "roll_size_bytes"),
        Prop("hdfs.rollCount", "roll_count"), Prop("hdfs.idleTimeout", "idle_timeout_s", SECONDS),
        Prop("hdfs.batchSize", "batch_size"),
        Prop("hdfs.codeC", "compression", enum({"gzip": "gzip", "gzipcodec": "gzip", "snappy": "snappy",
                                                "snappycodec": "snappy", "zstd": "zstd", "zstandardcodec": "zstd"},
                                               "use gzip or zstd (bzip2, lzo and lzop are not written)")),
        Prop("hdfs.fileType", "file_type", enum({"DataStream": "data_stream", "CompressedStream": "compressed_stream"},
                                                "rayflume does not write SequenceFiles: use DataStream or "
                                                "CompressedStream (or serializer parquet)")),
        no("hdfs.writeFormat", "only applies to SequenceFiles, which rayflume does not write; remove it"),
        Prop("hdfs.maxOpenFiles", "max_open_files"),
        no("hdfs.minBlockReplicas", "files are not rolled on under-replication; remove it"),
        Prop("hdfs.callTimeout", "call_timeout_s", MS), Prop("hdfs.threadsPoolSize", "threads_pool_size"),
        no("hdfs.rollTimerPoolSize", "roll timers need no pool; remove it"),
        no("hdfs.kerberosPrincipal", "no equivalent yet: obtain a ticket (kinit with the keytab) for the nodes' "
                                     "user before the sink starts; libhdfs uses the ticket cache"),
        no("hdfs.kerberosKeytab", "no equivalent yet: obtain a ticket (kinit -kt) for the nodes' user before the "
                                  "sink starts"),
        Prop("hdfs.proxyUser", "hdfs_user", why="rayflume connects as this user rather than impersonating it"),
        Prop("hdfs.round", "round"), Prop("hdfs.roundValue", "round_value"),
        Prop("hdfs.roundUnit", "round_unit", enum({"second": "second", "minute": "minute", "hour": "hour"},
                                                  "use second, minute or hour")),
        Prop("hdfs.timeZone", "time_zone"), Prop("hdfs.useLocalTimeStamp", "use_local_timestamp"),
        Prop("hdfs.closeTries", "close_tries"), Prop("hdfs.retryInterval", "retry_interval_s", SECONDS),
        Prop("serializer", "serializer", enum(SERIALIZER_TEXT, "rayflume writes text, header_and_text, json or "
                                                               "parquet; avro_event and Java serializers do not run "
                                                               "here")),
        Prop("serializer.appendNewline", "append_newline"),
        no("serializer.*", "the text serializers take only appendNewline; remove it"),
    ), finish=_hdfs_file_type),
    ComponentMapping("sink", "logger", "logger", (
        Prop("maxBytesToLog", "max_bytes_to_log"),
    )),
    ComponentMapping("sink", "avro", "avro", (
        Prop("hostname", "hostname", AS_IS, doc="Host of the receiving avro source."),
        Prop("port", "port", INT, doc="Port of the receiving avro source."),
        Prop("batch-size", "batch_size", INT, doc="Most events sent in one appendBatch call."),
        Prop("connect-timeout", "connect_timeout_s", MS, doc="Longest wait to connect."),
        Prop("request-timeout", "request_timeout_s", MS, doc="Longest wait for a batch's acknowledgement."),
        Prop("reset-connection-interval", "reset_connection_interval_s", SECONDS,
             doc="Reconnect this often (lets a load balancer spread connections)."),
        Prop("compression-type", "compression_type", enum({"none": "none", "deflate": "deflate"},
                                                          "use none or deflate"),
             doc="none or deflate; must match the receiver."),
        Prop("compression-level", "compression_level", INT, doc="deflate level 1-9."),
        Prop("ssl", "ssl", Conversion("", lambda v, a: _bool(v)), doc="Connect with TLS."),
        Prop("trust-all-certs", "trust_all_certs", Conversion("", lambda v, a: _bool(v)),
             doc="Do not verify the server's certificate."),
        no("truststore", PEM_TRUSTSTORE), no("truststore-password", PEM_TRUSTSTORE),
        no("truststore-type", PEM_TRUSTSTORE),
        no("exclude-protocols", JAVA_TLS_TUNING), no("include-protocols", JAVA_TLS_TUNING),
        no("exclude-cipher-suites", JAVA_TLS_TUNING), no("include-cipher-suites", JAVA_TLS_TUNING),
        no("maxIoWorkers", "the sink's connection is served by one event loop; remove it"),
    )),
    ComponentMapping("sink", "thrift", "thrift", (
        Prop("hostname", "hostname"), Prop("port", "port"), Prop("batch-size", "batch_size"),
        Prop("connect-timeout", "connect_timeout_s", MS), Prop("request-timeout", "request_timeout_s", MS),
        Prop("connection-reset-interval", "reset_connection_interval_s", SECONDS),
        Prop("protocol", "protocol"), Prop("ssl", "ssl"),
        no("truststore", PEM_TRUSTSTORE), no("truststore-password", PEM_TRUSTSTORE),
        no("truststore-type", PEM_TRUSTSTORE),
        no("exclude-protocols", JAVA_TLS_TUNING), no("include-protocols", JAVA_TLS_TUNING),
        no("kerberos", KERBEROS_RPC, error=True), no("client-principal", KERBEROS_RPC),
        no("client-keytab", KERBEROS_RPC), no("server-principal", KERBEROS_RPC),
    )),
    ComponentMapping("sink", "file_roll", "file_roll", (
        Prop("sink.directory", "directory"), Prop("sink.rollInterval", "roll_interval_s", SECONDS),
        Prop("sink.pathManager", None, enum({"DEFAULT": None}, "only the DEFAULT path manager exists here"),
             why="DEFAULT is what rayflume does; another path manager is an error"),
        Prop("sink.pathManager.extension", "extension"), Prop("sink.pathManager.prefix", "prefix"),
        Prop("sink.serializer", "serializer", enum(SERIALIZER_TEXT, "file_roll writes text or header_and_text")),
        Prop("sink.serializer.appendNewline", "append_newline"),
        Prop("serializer.appendNewline", "append_newline"),
        Prop("sink.batchSize", "batch_size"), Prop("batchSize", "batch_size"),
    )),
    ComponentMapping("sink", "null", "null", (Prop("batchSize", "batch_size"),)),
    ComponentMapping("sink", "org.apache.flume.sink.kafka.KafkaSink", "kafka", (
        Prop("kafka.bootstrap.servers", "bootstrap_servers"), Prop("kafka.topic", "topic"),
        Prop("flumeBatchSize", "batch_size"),
        no("kafka.flumeBatchSize", "Flume ignores this key (its batch size is flumeBatchSize, without kafka.); set "
                                   "flumeBatchSize"),
        Prop("useFlumeEventFormat", "use_flume_event_format"),
        Prop("defaultPartitionId", "default_partition_id"), Prop("partitionIdHeader", "partition_id_header"),
        Prop("allowTopicOverride", "allow_topic_override"), Prop("topicHeader", "topic_header"),
        no("timestampHeader", "no equivalent yet: records get the produce time; remove it"),
        Prop("brokerList", "bootstrap_servers", why="Flume's deprecated name of kafka.bootstrap.servers"),
        Prop("topic", "topic", why="Flume's deprecated name of kafka.topic"),
        Prop("batchSize", "batch_size", why="Flume's deprecated name of flumeBatchSize"),
        Prop("requiredAcks", "producer.acks", AS_IS, why="Flume's deprecated name of kafka.producer.acks"),
        *kafka_passthrough("producer", "producer", "producer"),
    ), finish=_kafka_acks),
    ComponentMapping("sink", "http", "http", (
        Prop("endpoint", "endpoint"), Prop("connectTimeout", "connect_timeout_s", MS),
        Prop("requestTimeout", "request_timeout_s", MS), Prop("contentTypeHeader", "content_type_header"),
        Prop("acceptHeader", "accept_header"), Prop("defaultBackoff", "default_backoff"),
        Prop("defaultRollback", "default_rollback"),
        no("defaultIncrementMetrics", "every response is counted by status class; remove it"),
        Prop("backoff.*", "backoff.*", Conversion("", lambda v, a: _bool(v))),
        Prop("rollback.*", "rollback.*", Conversion("", lambda v, a: _bool(v))),
        no("incrementMetrics.*", "every response is counted by status class; remove it"),
        Prop("batchSize", "batch_size"),
    )),
)

# -- interceptors, selectors, processors -----------------------------------------------------------
def _regex_extractor_serializers(mapping: dict, warn) -> None:
    """``serializers = s1 s2`` and ``serializers.s1.name`` ... -> a list of {name, type, pattern}."""
    names = mapping.pop("serializer_names", None)
    defined = mapping.pop("serializer_settings", {})
    if names is None:
        if defined:
            raise Unusable("serializers: the list of serializer names is missing (serializers = s1 s2)")
        return
    out = []
    for name in names:
        if name not in defined:
            raise Unusable(f"serializers.{name}: listed in serializers but has no serializers.{name}.name")
        out.append(defined.pop(name))
    for name in defined:
        warn(f"serializers.{name}.*: not in the serializers list, so Flume ignores it; not converted")
    mapping["serializers"] = out


INTERCEPTORS = (
    ComponentMapping("interceptor", "timestamp", "timestamp", (
        Prop("headerName", "header_name"), Prop("preserveExisting", "preserve_existing"))),
    ComponentMapping("interceptor", "host", "host", (
        Prop("hostHeader", "host_header"), Prop("useIP", "use_ip"), Prop("preserveExisting", "preserve_existing"))),
    ComponentMapping("interceptor", "static", "static", (
        Prop("key", "key"), Prop("value", "value"), Prop("preserveExisting", "preserve_existing"))),
    ComponentMapping("interceptor", "remove_header", "remove_header", (
        Prop("withName", "with_name"), Prop("fromList", "from_list"),
        Prop("fromListSeparator", "from_list_separator"), Prop("matching", "matching"))),
    ComponentMapping("interceptor", "org.apache.flume.sink.solr.morphline.UUIDInterceptor$Builder", "uuid", (
        Prop("headerName", "header_name"), Prop("preserveExisting", "preserve_existing"),
        Prop("prefix", "prefix"))),
    ComponentMapping("interceptor", "regex_filter", "regex_filter", (
        Prop("regex", "regex"), Prop("excludeEvents", "exclude_events"))),
    ComponentMapping("interceptor", "regex_extractor", "regex_extractor", (
        Prop("regex", "regex"),
        Prop("serializers", "serializer_names", LIST, why="the names; each becomes one entry of serializers"),
        Prop("serializers.*.name", "serializer_settings.*.name", AS_IS),
        Prop("serializers.*.type", "serializer_settings.*.type", AS_IS),
        Prop("serializers.*.pattern", "serializer_settings.*.pattern", AS_IS),
    ), finish=_regex_extractor_serializers, scratch=("serializer_names", "serializer_settings")),
    ComponentMapping("interceptor", "search_replace", "search_replace", (
        Prop("searchPattern", "search_pattern"), Prop("replaceString", "replace_string"),
        Prop("charset", "charset"))),
)

SELECTORS = (
    ComponentMapping("selector", "replicating", "replicating", (Prop("optional", "optional", LIST),)),
    ComponentMapping("selector", "multiplexing", "multiplexing", (
        Prop("header", "header"), Prop("default", "default", LIST),
        Prop("mapping.*", "mapping.*", LIST), Prop("optional.*", "optional.*", LIST))),
)

PROCESSORS = (
    ComponentMapping("processor", "default", "default", ()),
    ComponentMapping("processor", "failover", "failover", (
        Prop("priority.*", "priority.*", INT), Prop("maxpenalty", "max_penalty_s", MS))),
    ComponentMapping("processor", "load_balance", "load_balance", (
        Prop("selector", "selector", enum({"round_robin": "round_robin", "random": "random"},
                                          "a custom Java sink selector does not run here; use round_robin or "
                                          "random")),
        Prop("backoff", "backoff"), Prop("selector.maxTimeOut", "selector_max_timeout_s", MS))),
)

ALL: tuple[ComponentMapping, ...] = SOURCES + CHANNELS + SINKS + INTERCEPTORS + SELECTORS + PROCESSORS


def _index() -> dict[tuple[str, str], ComponentMapping]:
    out = {}
    for mapping in ALL:
        flume = registry.flume_type(mapping.kind, mapping.flume)
        names = flume.names() if flume is not None else (mapping.flume,)
        for name in names:
            out[(mapping.kind, name.lower())] = mapping
    return out


_BY_NAME = _index()


def mapping_for(kind: str, type_name: str) -> ComponentMapping | None:
    """The mapping of a Flume type (alias in any case, or class name). A rayflume type name is
    accepted too (its Flume mapping, or one without Flume properties for rayflume-only types).
    None: the type is unknown (:data:`UNSUPPORTED` may say why)."""
    found = _BY_NAME.get((kind, type_name.lower()))
    if found is not None:
        return found
    if kind == "interceptor" and ":" in type_name:
        # rayflume's own Python interceptor, `package.module:callable`, written in the properties file
        return ComponentMapping("interceptor", type_name, type_name, (
            Prop("mode", "mode", AS_IS, doc="batch or event"),
            Prop("args.*", "args.*", AS_IS, doc="keyword arguments of the interceptor class")))
    if registry.lookup(kind, type_name) is not None and registry.flume_type(kind, type_name) is None:
        for mapping in ALL:
            if mapping.kind == kind and mapping.rayflume_type == type_name and not mapping.implied:
                return mapping
        return ComponentMapping(kind, type_name, type_name)
    return None


def unsupported_reason(kind: str, type_name: str) -> str | None:
    """Why a Flume type has no rayflume equivalent and what to do, or None when it is not one of them
    (a Java interceptor class is one of them: Java does not run here)."""
    table = UNSUPPORTED.get(kind, {})
    reason = table.get(type_name) or {k.lower(): v for k, v in table.items()}.get(type_name.lower())
    if reason is None and kind == "interceptor" and "." in type_name and ":" not in type_name:
        reason = ("a Java interceptor does not run here: write it as a Python interceptor (type: "
                  "'package.module:callable', see rayflume/interceptors/callable.py)")
    return reason

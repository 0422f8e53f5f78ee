"""The Flume mapping table's sources: how each Flume source type's properties become rayflume keys.

Besides the entries (:data:`SOURCES`): the TLS properties of Flume's network sources, Flume's
``ipFilterRules`` as rayflume's ``allowed_clients``, and the reshaping of the avro source's IP
filter and of taildir's file groups (a group Flume would not read is reported, not converted).
"""
from __future__ import annotations

import ipaddress

from rayflume.flume_conf.tables.entries import (
    AS_IS,
    COMMA_LIST,
    INT,
    JAVA_TLS_TUNING,
    KERBEROS_RPC,
    LIST,
    MS,
    PEM_KEYSTORE,
    ComponentMapping,
    Conversion,
    Prop,
    Unusable,
    _bool,
    enum,
    kafka_passthrough,
    no,
)


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

"""The Flume mapping table's sinks: how each Flume sink type's properties become rayflume keys.

Besides the entries (:data:`SINKS`): Flume's text serializer names (:data:`SERIALIZER_TEXT`) and
the hdfs sink's ``fileType`` check (what Flume does with the codec depends on it; its default,
SequenceFile, is not written here).
"""
from __future__ import annotations

from rayflume.flume_conf.tables.entries import (
    AS_IS,
    INT,
    JAVA_TLS_TUNING,
    KERBEROS_RPC,
    MS,
    PEM_TRUSTSTORE,
    SECONDS,
    ComponentMapping,
    Conversion,
    Prop,
    Unusable,
    _bool,
    _kafka_acks,
    enum,
    kafka_passthrough,
    no,
)

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

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

This module is the table's front: it assembles the entries of every kind (:data:`ALL`, from
:mod:`rayflume.flume_conf.tables`, one module per component kind, where :class:`ComponentMapping`,
:class:`Prop` and the conversions are defined), holds the Flume types with no equivalent
(:data:`UNSUPPORTED`) and looks types up (:func:`mapping_for`, :func:`unsupported_reason`).
"""
from __future__ import annotations

from rayflume import registry
from rayflume.flume_conf.tables.channels import CHANNELS
from rayflume.flume_conf.tables.entries import AS_IS, ComponentMapping, Prop
from rayflume.flume_conf.tables.entries import AUTO as AUTO
from rayflume.flume_conf.tables.entries import KAFKA_CLIENT as KAFKA_CLIENT
from rayflume.flume_conf.tables.entries import Unusable as Unusable
from rayflume.flume_conf.tables.interceptors import INTERCEPTORS
from rayflume.flume_conf.tables.routing import PROCESSORS, SELECTORS
from rayflume.flume_conf.tables.sinks import SINKS
from rayflume.flume_conf.tables.sources import SOURCES

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

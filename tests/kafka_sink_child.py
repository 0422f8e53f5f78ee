"""A Kafka sink draining a file channel in a process of its own, for the kill tests of test_kafka.py.

    python tests/kafka_sink_child.py BOOTSTRAP TOPIC CHANNEL_DIR BATCH_SIZE MODE [AFTER [CUT]]

The channel and the sink are built from their configs (``FileChannelConfig``, ``KafkaSinkConfig``)
and driven by the real :class:`~rayflume._private.runners.SinkRunner` (take -> write -> commit), as
in a sink actor, without Ray. Every event body is a decimal event number.

MODE:

* ``drain``: run until the channel is empty, stop the sink, close the channel, print ``DONE``, exit 0.
* ``pause``: after AFTER committed takes, the next write produces only the first CUT records of its
  batch, waits until the broker acknowledged them, prints ``INFLIGHT`` and blocks: the batch is
  partly (CUT < batch) or wholly (CUT = batch) in Kafka and its take is not committed. The parent
  SIGKILLs it there.
* ``race``: as ``drain``, but once AFTER takes are committed, print ``FLUSH`` right before the next
  write's flush (its records are produced, not yet acknowledged) and go on at full speed; the
  parent SIGKILLs on that line, so the kill lands wherever it lands. If the channel empties first,
  print ``DRAINED`` and block, so the kill always finds the process alive.

Output, one line each (flushed at once, so a line written before a kill is never lost):

* ``READY``: the channel was opened (recovered) and the sink started;
* ``WRITE n,n,...``: a write of these events starts;
* ``COMMIT k``: the take of the last WRITE is committed (k takes committed so far);
* ``ROLLBACK message``: the last WRITE failed and its take was rolled back;
* ``INFLIGHT p,p,...|n,n,...`` (pause): the records produced and acknowledged | the whole batch;
* ``FLUSH n,n,...`` (race): the batch whose flush starts now.

A blocked child exits by itself (status 3) after ``PAUSE_LIMIT_S``, so a dead test leaves no process.
"""
from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rayflume.channels.file.config import FileChannelConfig  # noqa: E402
from rayflume.counters import Counters

PAUSE_LIMIT_S = 120.0


def channel_config(channel_dir: str, batch_size: int) -> FileChannelConfig:
    """The channel both the test (which fills it) and the children (which drain it) open."""
    return FileChannelConfig(type="file", checkpoint_dir=os.path.join(channel_dir, "checkpoint"),
                             data_dirs=[os.path.join(channel_dir, "data")], capacity=1_000_000,
                             transaction_capacity=batch_size, minimum_required_space_bytes=1 << 20,
                             checkpoint_interval_s=0.5)


_out_lock = threading.Lock()


def _emit(line: str) -> None:
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _numbers(values) -> str:
    return ",".join(str(int(v)) for v in values)


def _block(what: str) -> None:
    _emit(what)
    time.sleep(PAUSE_LIMIT_S)
    os._exit(3)


def main(argv: list[str]) -> int:
    from rayflume._private.runners import SinkRunner
    from rayflume.errors import DeliveryError
    from rayflume.processors.base import Status
    from rayflume.sinks.base import SinkContext
    from rayflume.sinks.kafka import KafkaSinkConfig

    bootstrap, topic, channel_dir, batch_size, mode = argv[:5]
    batch_size = int(batch_size)
    after = int(argv[5]) if len(argv) > 5 else 0
    cut = int(argv[6]) if len(argv) > 6 else 0
    assert mode in ("drain", "pause", "race"), mode

    channel = channel_config(channel_dir, batch_size).build("kc")
    sink = KafkaSinkConfig(type="kafka", channel="kc", bootstrap_servers=bootstrap, topic=topic,
                           batch_size=batch_size, call_timeout_s=10).build("ksink")
    sink.start(SinkContext("ksink"))
    runner = SinkRunner("ksink", sink, channel, "ksink-child", Counters())
    committed = 0

    real_write, real_produce_all = sink.write, sink._produce_all

    def write(batch):
        _emit("WRITE " + _numbers(batch.bodies()))
        real_write(batch)

    def produce_all(values, topics, keys, partitions, headers, deadline):
        if mode == "pause" and committed == after:
            def part(x):
                return x[:cut] if isinstance(x, list) else x

            real_produce_all(values[:cut], part(topics), part(keys), part(partitions), part(headers), deadline)
            left = sink._producer.flush(30)
            if left or sink._errors:  # failed records report through the sink's delivery callback
                _emit(f"ERROR of the first {cut} records, {left} not acknowledged, {len(sink._errors)} failed")
                os._exit(4)
            _block("INFLIGHT " + _numbers(values[:cut]) + "|" + _numbers(values))
        real_produce_all(values, topics, keys, partitions, headers, deadline)
        if mode == "race" and committed == after:
            _emit("FLUSH " + _numbers(values))  # the next thing write() does is flush

    sink.write, sink._produce_all = write, produce_all
    _emit("READY")
    while True:
        try:
            status = runner.process()
        except DeliveryError as exc:
            _emit(f"ROLLBACK {exc}".replace("\n", " "))
            time.sleep(0.2)
            continue
        if status is Status.READY:
            committed += 1
            _emit(f"COMMIT {committed}")
        elif channel.size() == 0:
            break
    if mode == "race":
        _block("DRAINED")
    sink.stop()
    channel.close()
    _emit("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

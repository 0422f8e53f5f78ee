"""User interceptors for tests of rayflume.interceptors.callable (imported by import path)."""
from __future__ import annotations

import pyarrow.compute as pc

from rayflume.event import Event, EventBatch

NOT_CALLABLE = 42
closed_tags: list[str] = []


def drop_debug(batch: EventBatch) -> EventBatch:
    """Batch mode: drops events whose body starts with b'debug'."""
    return batch.filter(pc.invert(pc.starts_with(batch.body.cast("string"), "debug")))


def shout(event: Event) -> Event | None:
    """Event mode: drops b'drop', upper-cases other bodies and tags them."""
    if event.body == b"drop":
        return None
    event.headers["shouted"] = "yes"
    return Event(body=event.body.upper(), headers=event.headers)


def returns_list(batch: EventBatch):
    return batch.to_events()


def returns_string(event: Event):
    return "not an event"


def duplicate(batch: EventBatch) -> EventBatch:
    return EventBatch.concat([batch, batch])


class Tagger:
    """A class interceptor with arguments; works in both modes."""

    def __init__(self, tag: str, value: str = "1"):
        self.tag = tag
        self.value = value
        self.seen = 0

    def intercept(self, item):
        if isinstance(item, EventBatch):
            from rayflume.interceptors.headers import set_header

            self.seen += len(item)
            return set_header(item, self.tag, self.value)
        self.seen += 1
        item.headers[self.tag] = self.value
        return item

    def close(self):
        closed_tags.append(self.tag)


class NoIntercept:
    def __init__(self):
        pass


class Outer:
    @staticmethod
    def nested(batch: EventBatch) -> EventBatch:
        return batch.slice(0, 1)

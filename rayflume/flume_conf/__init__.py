"""Flume agent configurations (Java properties files) in rayflume.

- :mod:`rayflume.flume_conf.properties` reads a properties file the way Java does, keeping each
  property's line.
- :mod:`rayflume.flume_conf.mapping` is the one table of how each Flume component type's
  properties become rayflume keys (or why they cannot).
- :mod:`rayflume.flume_conf.convert` turns one agent of a file into a rayflume topology mapping,
  reporting every property it does not carry over.
- :mod:`rayflume.flume_conf.docs` writes ``docs/flume-properties.md`` from the table and the
  component configs.
"""

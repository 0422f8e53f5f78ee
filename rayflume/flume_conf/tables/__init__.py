"""The Flume mapping table's entries, one module per component kind.

:mod:`~rayflume.flume_conf.tables.entries` defines what an entry is (:class:`ComponentMapping`,
:class:`Prop`, the conversions) and the pieces several kinds share; :mod:`.sources`,
:mod:`.channels`, :mod:`.sinks`, :mod:`.interceptors` and :mod:`.routing` (channel selectors and
sink processors) each hold the entries of their kind. :mod:`rayflume.flume_conf.mapping` assembles
them into the one table and looks types up in it: import the table from there.
"""

"""Sources: read the outside world into event batches."""
from rayflume.sources.base import Source, SourceContext

__all__ = ["Source", "SourceContext"]

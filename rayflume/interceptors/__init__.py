"""Interceptors: batch -> batch transformations run inside the source actor."""
from rayflume.interceptors.base import Interceptor, InterceptorChain

__all__ = ["Interceptor", "InterceptorChain"]

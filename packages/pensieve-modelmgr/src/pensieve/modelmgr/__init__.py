"""Find, fetch, convert and load models; the pool of loaded models handing out engines."""

from pensieve.modelmgr.embedded import EMBEDDED_NAME, embedded_model_path
from pensieve.modelmgr.loader import LoadedModel, load_source
from pensieve.modelmgr.pool import ModelPool
from pensieve.modelmgr.sources import ModelSource, resolve_source

__all__ = [
    "EMBEDDED_NAME",
    "LoadedModel",
    "ModelPool",
    "ModelSource",
    "embedded_model_path",
    "load_source",
    "resolve_source",
]

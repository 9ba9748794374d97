from elt.models.base import LoopedGenerativeModule
from elt.models.maskgit import MaskGITELT

__all__ = ["LoopedGenerativeModule", "MaskGITELT"]

from elt.models.base import LoopedGenerativeModule
from elt.models.dit import DiTELT
from elt.models.maskgit import MaskGITELT

__all__ = ["LoopedGenerativeModule", "DiTELT", "MaskGITELT"]

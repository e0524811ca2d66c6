"""Neural layers and models: band layers, modulation, G-HSNO fusion, alignment, SSRModel."""
from .alignment import SpectralInfoNCE
from .bands import FixedBands, SpectralIDBands, decomposition_loss, reduce_features
from .baselines import LightGCN, MFBPR
from .fusion import CPFusion, SkipCPFusion, SumFusion
from .model import SSRModel
from .modulation import BandMask, BandReliability, consistency_loss
from .recommender import Recommender, ranking_loss

__all__ = ["FixedBands", "SpectralIDBands", "reduce_features", "decomposition_loss", "BandReliability", "BandMask",
           "consistency_loss", "CPFusion", "SkipCPFusion", "SumFusion", "SpectralInfoNCE", "Recommender",
           "ranking_loss", "SSRModel", "MFBPR", "LightGCN"]

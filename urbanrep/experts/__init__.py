"""Modality experts: one dedicated GNN per modality, shared experts and the mixture gate.

Every expert is ``forward(data: HeteroData) -> Tensor [num_regions, out_channels]``; see
:mod:`urbanrep.experts.base`. ``get_expert(name)`` returns a registered class.
"""

from urbanrep.experts.base import (
    EXPERTS,
    Expert,
    ExpertConfig,
    MaskedInputEncoder,
    expert_from_config,
    get_expert,
)
from urbanrep.experts.landuse import LanduseExpert
from urbanrep.experts.mobility import DirectedFlowConv, MobilityExpert
from urbanrep.experts.moe import ModalityMoE, MoEConfig, load_balancing_loss
from urbanrep.experts.poi import PoiExpert
from urbanrep.experts.remote_sensing import RemoteSensingExpert
from urbanrep.experts.road import RoadExpert
from urbanrep.experts.shared import GCNStack, SharedExpert, UniformExpert
from urbanrep.experts.street_view import StreetViewExpert

__all__ = [
    "EXPERTS",
    "DirectedFlowConv",
    "Expert",
    "ExpertConfig",
    "GCNStack",
    "LanduseExpert",
    "MaskedInputEncoder",
    "MobilityExpert",
    "ModalityMoE",
    "MoEConfig",
    "PoiExpert",
    "RemoteSensingExpert",
    "RoadExpert",
    "SharedExpert",
    "StreetViewExpert",
    "UniformExpert",
    "expert_from_config",
    "get_expert",
    "load_balancing_loss",
]

"""Experiment planners for nnunet-cin (installed as nnunet_cin.planners)."""
from nnunet_cin.planning.planners import (PLANNERS, CINPlannerMixin, ExperimentPlannerCIN, ResEncUNetPlannerCIN,
                                              nnUNetPlannerResEncLCIN, nnUNetPlannerResEncMCIN,
                                              nnUNetPlannerResEncXLCIN)

__all__ = ["PLANNERS", "CINPlannerMixin", "ExperimentPlannerCIN", "ResEncUNetPlannerCIN", "nnUNetPlannerResEncMCIN",
           "nnUNetPlannerResEncLCIN", "nnUNetPlannerResEncXLCIN"]

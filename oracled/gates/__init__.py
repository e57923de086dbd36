"""The pause gates: a per-market state machine evaluated for all markets at once."""

from oracled.gates.machine import GateInputs, GateParams, GateState, step

__all__ = ["GateInputs", "GateParams", "GateState", "step"]

"""Layer-wise relevance propagation for CNNs and CNN attention modules.

``xaiimg.explain("lrp", model, x, composite="epsilon-gamma-box")`` or ``"lrp-<composite>"``; rules in
:mod:`.rules`, composites in :mod:`.composites`, canonizers in :mod:`.canonizers`.
"""
from xaiimg.methods.lrp.composites import COMPOSITES, Composite, make_composite
from xaiimg.methods.lrp.explainer import ALIASES, LRP
from xaiimg.methods.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Pass, Rule, ZBox, ZPlus

__all__ = ["ALIASES", "COMPOSITES", "AlphaBeta", "Composite", "Epsilon", "Flat", "Gamma", "LRP", "Pass", "Rule",
           "ZBox", "ZPlus", "make_composite"]

"""Analyses that combine models, methods and metrics into a paper's study (``xaiimg.analysis.aesthetic``:
the aesthetic model's interpretability study, paper 000)."""

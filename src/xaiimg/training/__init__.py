"""Training: objectives, training loops, prediction and evaluation of the package's networks.

``xaiimg.training.classification``: the seeded loop for the synthetic-benchmark classifiers;
``xaiimg.training.aesthetic``: EMD training and score metrics of the aesthetic model.
"""

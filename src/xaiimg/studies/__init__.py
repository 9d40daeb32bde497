"""The papers' studies, built on the library (models, methods, metrics, data, training), which never imports them.

``thesis``: the thesis's experiments and tables (notebooks 04-06); ``aesthetic``: paper 000's interpretability
study of the aesthetic model and its training runs (notebooks 01-03); ``synthetic``: the synthetic-benchmark
models' training runs; ``runs``: the one place that knows the layout of a run folder.
"""

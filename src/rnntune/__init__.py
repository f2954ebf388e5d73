"""rnntune: durable, distributed tuning of recurrent classifiers on a shared study database."""

__version__ = "0.1.0"

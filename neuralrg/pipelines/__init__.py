"""Orchestration above the library: what ``train.py``, ``sample.py`` and ``analyze.py`` run
(config → objects → run → files, figures, W&B), run directories, devices and CLI errors.

Imports run one way: physics → flows → checkpoint → sampling / analysis → training → pipelines.
"""

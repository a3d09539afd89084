"""instructgpt: the InstructGPT pipeline (Ouyang et al. 2022) end to end.

Stages are plain functions ``train_x(config) -> result``; see the README.
"""

__version__ = "0.1.0"

"""The benchmark harness behind ``fastlstm bench``: shapes, providers, timing, checks, reports.

``shapes`` names the problems and grids, ``providers`` builds each competing implementation
on one shared set of weights and inputs, ``runner`` checks every provider against
``torch.nn.LSTM`` before timing it side by side (``timing``), ``report`` writes the table,
JSON, CSV, Markdown and chart, and ``env`` records the machine. The GPU check
(``benchmarks/gpu_check.sh``) and the pytest-benchmark suite (``benchmarks/bench_lstm.py``)
are thin entry points over the same code.
"""
